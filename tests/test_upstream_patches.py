"""ggml_patches/: every patch applies to the pinned upstream, and a bad patch stops the build loudly."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APPLY = ROOT / "cmake" / "apply_patches.cmake"
PATCHES = sorted((ROOT / "ggml_patches").glob("*.patch"))
SDIST = "llama_cpp_python-0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"


def _cache_tarball() -> Path | None:
    if "COCKTAIL_GGUF_CACHE" in os.environ:
        base = Path(os.environ["COCKTAIL_GGUF_CACHE"])
    elif "XDG_CACHE_HOME" in os.environ:
        base = Path(os.environ["XDG_CACHE_HOME"]) / "cocktail-gguf"
    else:
        base = Path.home() / ".cache" / "cocktail-gguf"
    path = base / f"{SDIST}.tar.gz"
    return path if path.exists() else None


def _apply(upstream: Path, patches: list[Path]) -> subprocess.CompletedProcess[str]:
    cmake = shutil.which("cmake")
    assert cmake, "cmake is needed to run the build's patch step"
    return subprocess.run(
        [cmake, f"-DUPSTREAM={upstream}", f"-DPATCHES={';'.join(map(str, patches))}", "-P", str(APPLY)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _touched_files(patch: Path) -> list[str]:
    return re.findall(r"^\+\+\+ b/(\S+)", patch.read_text(), flags=re.MULTILINE)


def test_every_patch_has_a_purpose_line() -> None:
    assert PATCHES, "the patch mechanism is exercised by at least one real hook"
    for p in PATCHES:
        first = p.read_text().splitlines()[0]
        assert first.startswith("# purpose: "), f"{p.name} must start with a one-line purpose header"


def test_patches_apply_to_pinned_sdist(tmp_path: Path) -> None:
    tarball = _cache_tarball()
    if tarball is None:
        pytest.skip("no cached sdist (the build was given COCKTAIL_SDIST_FILE or another cache)")
    import hashlib

    assert hashlib.sha256(tarball.read_bytes()).hexdigest() == SDIST_SHA256
    wanted = {f"{SDIST}/{f}" for p in PATCHES for f in _touched_files(p)}
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.name in wanted]
        assert {m.name for m in members} == wanted
        tar.extractall(tmp_path, members=members, filter="data")
    upstream = tmp_path / SDIST
    r = _apply(upstream, PATCHES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cocktail_system_info" in (upstream / "vendor" / "llama.cpp" / "src" / "llama.cpp").read_text()
    assert '"cocktail_gguf" / "lib"' in (upstream / "llama_cpp" / "llama_cpp.py").read_text()


def test_failing_patch_stops_with_its_name(tmp_path: Path) -> None:
    upstream = tmp_path / "up"
    (upstream / "src").mkdir(parents=True)
    (upstream / "src" / "a.c").write_text("int a = 1;\nint b = 2;\n")
    good = tmp_path / "0001-good.patch"
    header = "# purpose: test\n--- a/src/a.c\n+++ b/src/a.c\n@@ -1,2 +1,2 @@\n"
    good.write_text(header + "-int a = 1;\n+int a = 3;\n int b = 2;\n")
    bad = tmp_path / "0002-bad.patch"
    bad.write_text(header + " int a = 1;\n-int b = 9;\n+int b = 4;\n")
    r = _apply(upstream, [good, bad])
    assert r.returncode != 0
    assert "0002-bad.patch does not apply" in r.stdout + r.stderr
    # the good one went in, the bad one left the file as the good one made it
    assert (upstream / "src" / "a.c").read_text() == "int a = 3;\nint b = 2;\n"
