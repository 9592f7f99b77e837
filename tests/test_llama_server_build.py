"""labkit/llama_server_build.py: the CMake switches, the cache key of the wheel, finding the server in a wheel."""

import zipfile

from labkit import llama_server_build as build


def test_server_build_switches_and_cache_key(tmp_path, monkeypatch):
    args = build.cmake_args("-DGGML_CUDA=on")
    assert "-DLLAMA_BUILD_SERVER=ON" in args and "-DLLAVA_BUILD=OFF" in args and args.endswith("-DGGML_CUDA=on")
    monkeypatch.setenv("LABKIT_WHEELS", str(tmp_path))
    assert build.wheel_dir("0.3.36", args) != build.wheel_dir("0.3.36", build.cmake_args(""))
    assert build.wheel_dir("0.3.36", args).parent == tmp_path
    assert build.tested_version() == "0.3.36"
    wheel = tmp_path / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llama_cpp/__init__.py", "")
    assert build.server_in_wheel(wheel) is None
    with zipfile.ZipFile(wheel, "a") as zf:
        zf.writestr("bin/llama-server", "")
    assert build.server_in_wheel(wheel) == "bin/llama-server"
