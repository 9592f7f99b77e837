#!/usr/bin/env bash
# Set up a GPU machine that reaches no package index, from the wheels benchmarks/gpu_wheels.py made.
#   bash benchmarks/gpu_setup.sh            # in the checkout, with .gpu-wheels/c*/ carried there
# Joins split files, installs the wheels into /tmp/labkit-site (the image's torch/transformers stay), builds
# llama-cpp-python with CUDA once (about 5 minutes on 16 cores; the wheel is kept in .gpu-wheels/built/),
# registers the notebook kernel and prints what it has. Then: PYTHONPATH=/tmp/labkit-site python3 benchmarks/gpu_course_run.py
# NO_LLAMA_BUILD=1 skips the build (to run the notebooks that need no llama.cpp while it builds elsewhere).
# In your own shell on that image, also export LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6 before Python
# runs torch and llama.cpp together (gpu_course_run.py does it for its runs; see libstdcxx_preload there).
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=/tmp/labkit-site
W=.gpu-wheels
mkdir -p "$W/all" "$W/built"
# Join parts (name.partNN, possibly carried in different folders) back into whole files.
python3 - "$W" <<'PY'
import shutil, sys
from pathlib import Path
w = Path(sys.argv[1])
files = [f for f in w.glob("c*/*") if f.is_file()]
whole = {}
for f in files:
    name, _, part = f.name.rpartition(".part")
    if part.isdigit() and len(part) == 2:
        whole.setdefault(name, []).append(f)
    else:
        shutil.copy(f, w / "all" / f.name)
for name, parts in whole.items():
    with open(w / "all" / name, "wb") as out:
        for p in sorted(parts, key=lambda p: p.name):
            out.write(p.read_bytes())
print(f"{len(list((w / 'all').iterdir()))} files ready ({len(whole)} joined from parts)")
PY
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" $W/all/*.whl
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# cuBLAS and friends come as pip wheels in this image (torch's): make them findable for llama.cpp's CUDA build too.
NVLIBS=$(python3 -c "import glob, site; print(':'.join(sorted(glob.glob(site.getsitepackages()[0] + '/nvidia/*/lib'))))")
export LD_LIBRARY_PATH="$NVLIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "export PYTHONPATH=$PYTHONPATH LD_LIBRARY_PATH=$LD_LIBRARY_PATH" > /tmp/labkit-env.sh
# A CUDA build of llama.cpp made elsewhere (benchmarks/llama_cuda_prebuild.sh): its libraries replace the CPU ones
# of the llama-cpp-python just installed, and llama-server & co. go to $SITE/bin (RUNPATH $ORIGIN), so nothing
# compiles here.
if [ -f $W/all/llama-cuda-sm90.tar.xz ]; then
  rm -rf /tmp/llama-cuda && mkdir -p /tmp/llama-cuda && tar xJf $W/all/llama-cuda-sm90.tar.xz -C /tmp/llama-cuda
  mkdir -p "$SITE/bin" && cp -a /tmp/llama-cuda/bin/. "$SITE/bin/" && cp -a /tmp/llama-cuda/bin/lib*.so* "$SITE/llama_cpp/lib/"
  # the server wheel keeps its own (CPU) libggml in $SITE/lib, which labkit's server launcher puts first on the
  # library path: without this copy llama-server ran on the CPU (17 tok/s on the 8B)
  mkdir -p "$SITE/lib" && cp -a /tmp/llama-cuda/bin/lib*.so* "$SITE/lib/"
  echo "llama.cpp: the prebuilt CUDA build is in $SITE/bin, $SITE/lib and $SITE/llama_cpp/lib"
fi
if [ "${NO_LLAMA_BUILD:-0}" != 1 ] && ! python3 -c "import llama_cpp" 2>/dev/null; then
  sdist=$(ls $W/all/llama_cpp_python-*.tar.gz 2>/dev/null | head -1 || true)
  # a wheel built before llama-server was part of the build (no bin/llama-server in it) is built again
  python3 -c "import glob, sys, zipfile; ok = [w for w in glob.glob('$W/built/llama_cpp_python-*.whl')
if any(n.endswith('bin/llama-server') for n in zipfile.ZipFile(w).namelist())]; sys.exit(0 if ok else 1)" \
    || rm -f $W/built/llama_cpp_python-*.whl
  if ! ls $W/built/llama_cpp_python-*.whl >/dev/null 2>&1 && [ -n "$sdist" ]; then
    echo "building llama-cpp-python and llama-server with CUDA from $sdist (about 6 minutes)"
    # the course's llama-server switches (labkit/llama_server_build.py): the binary lands in $SITE/bin/
    CMAKE_ARGS="$(CMAKE_ARGS='-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90' python3 labkit/llama_server_build.py --show-args)" \
      CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      python3 -m pip wheel -q --no-deps --no-build-isolation -w $W/built "$sdist"
  fi
  if ls $W/built/llama_cpp_python-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target "$SITE" $W/built/llama_cpp_python-*.whl
  else
    echo "note: no llama-cpp-python here (its source was not carried): notebooks that run llama.cpp will fail"
  fi
fi
python3 -m ipykernel install --prefix /tmp/labkit-kernel --name python3 >/dev/null
echo "JUPYTER_PATH=/tmp/labkit-kernel/share/jupyter PYTHONPATH=$PYTHONPATH"
python3 -m labkit doctor || true
