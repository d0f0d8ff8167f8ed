"""Which code produced a result: the git commit of a checkout and a hash of the package's own files.

The git commit says where to look; the source hash says whether two results came from the same
code, also from an installed wheel (no git) or a checkout with uncommitted edits.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
#: files of the package that can change a result (code and the data files it ships)
_SUFFIXES = (".py", ".txt", ".json", ".yaml")


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD of the checkout the package runs from (None outside a git checkout)."""
    try:
        r = subprocess.run(["git", "-C", str(PACKAGE), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """sha256 (16 hex digits) over the relative paths and bytes of the package's files."""
    h = hashlib.sha256()
    for f in sorted(p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix in _SUFFIXES and "__pycache__" not in p.parts):
        h.update(f.relative_to(PACKAGE).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def code() -> dict[str, str | None]:
    """``{"source": source_hash(), "git": git_commit()}``: recorded with every cached study result."""
    return {"source": source_hash(), "git": git_commit()}
