"""How tests start `python -m cocktail_gguf...` children: they must import the cocktail_gguf under test
(installed in CI, the source tree in development) whatever their working directory, and must not run in the
repository root, whose cocktail_gguf/ has no native library in CI."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cocktail_gguf

CHILD_CWD = tempfile.gettempdir()


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    parent = str(Path(cocktail_gguf.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (parent, env.get("PYTHONPATH")) if p)
    return env
