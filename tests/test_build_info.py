"""The installed package loads our patched libllama and reports how it was built."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import llama_cpp
import pytest

import cocktail_gguf
from cocktail_gguf import _native
from cocktail_gguf.cli import main


def test_build_info_fields() -> None:
    info = _native.build_info()
    assert info["version"] == cocktail_gguf.__version__
    assert info["upstream"] == "llama_cpp_python-0.3.36"
    assert info["ggml_version"] == "0.25.3"
    assert isinstance(info["cuda"], bool)
    patches = sorted(p.name for p in (Path(__file__).parents[1] / "ggml_patches").glob("*.patch"))
    assert info["patches"].split(",") == patches
    assert Path(info["library"]).exists()


def test_llama_cpp_uses_our_library() -> None:
    loaded = Path(llama_cpp.llama_cpp._lib._name).resolve()
    assert loaded == Path(_native.build_info()["library"]).resolve()
    # the 0001 patch makes libllama itself say it is ours
    system_info = llama_cpp.llama_print_system_info().decode()
    assert f"COCKTAIL : VERSION = {cocktail_gguf.__version__}" in system_info
    assert f"CUDA = {int(_native.build_info()['cuda'])}" in system_info


def test_devices_include_cpu() -> None:
    devices = _native.devices()
    assert any(d["type"] == "cpu" for d in devices)
    assert all(d["name"] and d["memory_total"] >= 0 for d in devices)


def test_device_index_out_of_range_is_value_error() -> None:
    buf = _native.ffi.new("char[]", 256)
    with pytest.raises(ValueError, match="device index 99 out of range"):
        _native.check(_native.lib().cocktail_device_info(99, buf, len(buf)), "cocktail_device_info")


def test_cli_info_json(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cocktail_gguf"] == cocktail_gguf.__version__
    assert info["llama_cpp_python"] == "0.3.36"
    assert "COCKTAIL" in info["system_info"]


def _run(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd away from the checkout (`python -c` would import the source tree); the packages under test stay
    # importable (a dev run imports them from the source tree through PYTHONPATH)
    paths = {str(Path(m.__file__).resolve().parents[1]) for m in (cocktail_gguf, llama_cpp)}
    env = dict(env, PYTHONPATH=os.pathsep.join([*paths, env.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_llama_cpp_imported_first_loads_our_library(tmp_path: Path) -> None:
    beside = Path(llama_cpp.__file__).resolve().parents[1] / "cocktail_gguf" / "lib"
    if _native.LIB_DIR_ENV in os.environ or not beside.exists():
        pytest.skip("a dev checkout: llama_cpp is not installed beside cocktail_gguf/lib")
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_CPP_LIB_PATH"}
    code = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode()); import cocktail_gguf"
    r = _run(code, env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "COCKTAIL : VERSION" in r.stdout


def test_refuses_other_llama_library_already_loaded(tmp_path: Path) -> None:
    # a second copy of the library at another path stands for a stock llama-cpp-python build
    other = tmp_path / "other"
    shutil.copytree(_native.lib_dir(), other, symlinks=True)
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=str(other))
    r = _run("import llama_cpp, cocktail_gguf", env, tmp_path)
    assert r.returncode != 0
    assert "already imported with the library" in r.stderr
    r = _run("import cocktail_gguf", env, tmp_path)
    assert r.returncode != 0
    assert "LLAMA_CPP_LIB_PATH" in r.stderr and str(other) in r.stderr


def test_cuda_build_sees_a_gpu() -> None:
    if not _native.build_info()["cuda"]:
        return  # CPU build: nothing to check here
    assert any(d["type"] == "gpu" for d in _native.devices()), _native.devices()


def test_torch_imported_first(tmp_path: Path, tiny_models: dict[str, Path], llama_kwargs: dict) -> None:
    # CPU build: works. CUDA build with a CUDA torch loaded first: a clear error, not the segfault at model
    # load seen on the GPU machine (bench/NOTES.md). torch only ever runs in subprocesses here: a CUDA torch
    # in the test process aborts it at exit next to our CUDA build.
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    probe = _run("import torch; print(torch.version.cuda is not None)", dict(os.environ), tmp_path)
    assert probe.returncode == 0, probe.stderr[-2000:]
    cuda_torch = probe.stdout.strip().endswith("True")
    code = (
        "import torch, cocktail_gguf; "
        f"llm = cocktail_gguf.Llama({str(tiny_models['tiny-mha'])!r}, n_ctx=128, verbose=False, "
        f"n_gpu_layers={llama_kwargs['n_gpu_layers']}); "
        "print(len(llm('hello', max_tokens=4, temperature=0.0)['choices'][0]['text']) >= 0)"
    )
    r = _run(code, dict(os.environ), tmp_path)
    if _native.build_info()["cuda"] and cuda_torch:
        assert r.returncode == 1, r.stderr[-2000:]
        assert "must be imported before torch" in r.stderr
    else:
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip().endswith("True")
