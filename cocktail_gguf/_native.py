"""Loads our libllama and binds the cocktail C API (native/cocktail_api.h) with cffi.

llama-cpp-python's ctypes code (package ``llama_cpp``) is pointed at the same library through
``LLAMA_CPP_LIB_PATH`` before it is imported, so both bindings share one loaded libllama.
"""

from __future__ import annotations

import json
import os
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from cffi import FFI

_PKG_DIR = Path(__file__).resolve().parent
LIB_DIR_ENV = "COCKTAIL_GGUF_LIB_DIR"


class NativeError(RuntimeError):
    """An error reported by the native runtime (the message comes from cocktail_last_error())."""


def lib_dir() -> Path:
    """Directory holding libllama/libggml*: $COCKTAIL_GGUF_LIB_DIR, else the installed package's lib/."""
    override = os.environ.get(LIB_DIR_ENV)
    path = Path(override).resolve() if override else _PKG_DIR / "lib"
    if not _lib_file(path).exists():
        how = (
            f"${LIB_DIR_ENV}={override!r} has no {_lib_name()}"
            if override
            else f"{path} has no {_lib_name()}: this is a source tree, not an installed cocktail-gguf "
            f"(run `pip install .`, or set {LIB_DIR_ENV} to a build's library folder)"
        )
        raise ImportError(f"cocktail-gguf native library not found: {how}")
    return path


def _lib_name() -> str:
    if sys.platform == "darwin":
        return "libllama.dylib"
    if sys.platform == "win32":
        return "llama.dll"
    return "libllama.so"


def _lib_file(directory: Path) -> Path:
    return directory / _lib_name()


def _header_text() -> str:
    for candidate in (_PKG_DIR / "include" / "cocktail_api.h", _PKG_DIR.parent / "native" / "cocktail_api.h"):
        if candidate.exists():
            return candidate.read_text()
    raise ImportError("cocktail_api.h not found next to the cocktail_gguf package")


def _cdef_from_header(text: str) -> str:
    """Turns the C header into cffi declarations: drop preprocessor lines, extern "C", export macros."""
    text = re.sub(r"//[^\n]*", "", text)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    text = "\n".join(lines)
    text = text.replace('extern "C" {', "").replace("COCKTAIL_API", "")
    # the closing brace of the extern "C" block is the only lone '}' at column 0
    text = re.sub(r"^}\s*$", "", text, flags=re.MULTILINE)
    return text


def _point_llama_cpp_at(directory: Path) -> None:
    """Makes `import llama_cpp` load our libllama; refuses a different one already loaded."""
    ours = _lib_file(directory).resolve()
    mod = sys.modules.get("llama_cpp.llama_cpp")
    if mod is not None:
        loaded = Path(getattr(mod._lib, "_name", "")).resolve()
        if loaded != ours:
            raise RuntimeError(
                f"llama_cpp is already imported with the library {loaded}, not cocktail-gguf's {ours}; "
                "import cocktail_gguf before llama_cpp (or in a fresh process)"
            )
        return
    env = os.environ.get("LLAMA_CPP_LIB_PATH")
    if env and Path(env).resolve() != directory.resolve():
        raise RuntimeError(
            f"LLAMA_CPP_LIB_PATH={env!r} points at another llama.cpp build; cocktail-gguf needs its own "
            f"library in {directory}: unset LLAMA_CPP_LIB_PATH or set it to that folder"
        )
    os.environ["LLAMA_CPP_LIB_PATH"] = str(directory)


ffi = FFI()
ffi.cdef(_cdef_from_header(_header_text()))


@lru_cache(maxsize=1)
def lib() -> Any:
    """The loaded cffi library object (loads libllama on first use)."""
    directory = lib_dir()
    _point_llama_cpp_at(directory)
    loaded = ffi.dlopen(str(_lib_file(directory)))
    _refuse_cuda_after_torch(loaded)
    return loaded


def _refuse_cuda_after_torch(loaded: Any) -> None:
    """A CUDA build loaded after a CUDA torch crashes at model load (bench/NOTES.md): say so instead."""
    torch = sys.modules.get("torch")
    if torch is None or getattr(getattr(torch, "version", None), "cuda", None) is None:
        return
    if not json.loads(ffi.string(loaded.cocktail_build_info()).decode())["cuda"]:
        return
    raise RuntimeError(
        "cocktail-gguf's CUDA build must be imported before torch (a CUDA torch "
        f"{torch.__version__} is already loaded, and its CUDA libraries would be bound into ours): "
        "`import cocktail_gguf` first"
    )


def check(status: int, what: str) -> None:
    """Raises NativeError (ValueError for bad arguments) when a C API call returned an error code."""
    if status == 0:
        return
    message = ffi.string(lib().cocktail_last_error()).decode("utf-8", "replace")
    if status == lib().COCKTAIL_EINVAL:
        raise ValueError(f"{what}: {message}")
    raise NativeError(f"{what} failed ({status}): {message}")


def version() -> str:
    return str(ffi.string(lib().cocktail_version()).decode())


def build_info() -> dict[str, Any]:
    info: dict[str, Any] = json.loads(ffi.string(lib().cocktail_build_info()).decode())
    info["library"] = str(_lib_file(lib_dir()))
    return info


def devices() -> list[dict[str, Any]]:
    out = []
    buf = ffi.new("char[]", 1024)
    for i in range(lib().cocktail_device_count()):
        check(lib().cocktail_device_info(i, buf, len(buf)), f"cocktail_device_info({i})")
        out.append(json.loads(ffi.string(buf).decode("utf-8", "replace")))
    return out


def memory_bytes(ctx: Any) -> dict[str, int]:
    """Bytes llama.cpp allocated for a llama_context (a llama_cpp ctypes pointer): model, its own KV
    cache ("kv_cache") and compute buffers, summed over devices."""
    import ctypes

    address = ctypes.cast(ctx, ctypes.c_void_p).value
    if not address:
        raise ValueError(f"ctx={ctx!r} is not a live llama_context")
    out = ffi.new("size_t[3]")
    check(
        lib().cocktail_memory_bytes(ffi.cast("struct llama_context *", address), out, out + 1, out + 2),
        "cocktail_memory_bytes",
    )
    return {"model": int(out[0]), "kv_cache": int(out[1]), "compute": int(out[2])}
