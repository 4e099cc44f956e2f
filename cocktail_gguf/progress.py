"""tqdm progress bars for long prefill and planning (optional: nothing is shown without tqdm)."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int, progress: bool | None, desc: str, unit: str, auto_from: int) -> Any:
    """A tqdm bar, or None: progress False, or None (auto) with total < auto_from or stderr not a
    terminal, or tqdm not installed."""
    if progress is False or (progress is None and (total < auto_from or not sys.stderr.isatty())):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, leave=False)
