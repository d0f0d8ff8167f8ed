"""New output directories written all or nothing: checked first, built beside the target in a
temporary directory, renamed into place on success only (HF export / import, ``rnope convert``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_dir", "check_new_dir"]


def check_new_dir(out: Path) -> None:
    """``out`` may be created as a new directory: absent or an empty directory, below a directory."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ValueError(f"output '{out}' exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"output directory '{out}' exists and is not empty")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"output '{out}': '{parent}' is not a directory")
            break


def atomic_dir(out: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` in a fresh directory beside ``out``; rename it to ``out`` on success only."""
    check_new_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
        build(tmp)
        check_new_dir(out)  # nobody wrote there meanwhile
        if out.is_dir():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
