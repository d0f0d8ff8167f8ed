"""What every command's outputs share: where and how files are written, and what is recorded with them.

* **provenance** -- :func:`git_commit`, :func:`source_hash`, :func:`code`: which code produced a
  result. The git commit says where to look; the source hash says whether two results came from
  the same code, also from an installed wheel (no git) or a checkout with uncommitted edits.
* **environment** -- :func:`versions` and :func:`machine`: the library versions and the hardware a
  result was measured with.
* **output paths** -- :func:`check_out_dir` (one rule for every ``--out`` directory),
  :func:`check_out_file`, :func:`safe_name` (a name as it may appear in a file name).
* **atomic writes** -- :func:`atomic_write_text` (one file), :func:`write_files` (several files, all
  or nothing), :func:`atomic_dir` (a whole new directory). A failed write never leaves a partial
  file under the final name, nor a temporary file behind.
* **text** -- :func:`length_label` (``2048`` -> ``2k``) and :func:`markdown_table`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_dir",
    "atomic_write_text",
    "check_new_dir",
    "check_out_dir",
    "check_out_file",
    "code",
    "git_commit",
    "length_label",
    "machine",
    "markdown_table",
    "safe_name",
    "source_hash",
    "versions",
    "write_files",
]

#: the package directory: what :func:`source_hash` hashes and where :func:`git_commit` asks git
PACKAGE = Path(__file__).resolve().parent
#: files of the package that can change a result (code and the data files it ships)
_SUFFIXES = (".py", ".txt", ".json", ".yaml")


# ------------------------------------------------------------------------------------------ provenance
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


# ----------------------------------------------------------------------------------------- environment
def _dist_version(name: str) -> str | None:
    """The installed version of a distribution, without importing it (None when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _rnope_version() -> str:
    from . import __version__

    return __version__


def _torch():
    import torch

    return torch


#: every version :func:`versions` can record, in the order of its full record
_VERSIONS: dict[str, Callable[[], Any]] = {
    "rnope": _rnope_version,
    "git_commit": git_commit,
    "python": platform.python_version,
    "torch": lambda: _torch().__version__,
    "cuda": lambda: _torch().version.cuda,
    "platform": platform.platform,
    "numpy": lambda: _dist_version("numpy"),
    "tokenizers": lambda: _dist_version("tokenizers"),
    "transformers": lambda: _dist_version("transformers"),
    "lm_eval": lambda: _dist_version("lm_eval"),
}


def versions(keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Versions that affect results, ``{name: version or None}``.

    Without ``keys``: rnope, its git commit (None outside a checkout), Python, torch, torch's CUDA,
    the platform, numpy, tokenizers, transformers and lm_eval (None when not installed) -- the
    ``versions`` of every evaluation document. With ``keys``: only those, in that order (the
    attention analysis records ``("rnope", "torch", "numpy", "python")``; a training run's
    ``run.json`` ``("python", "torch", "rnope", "numpy", "tokenizers")``).
    """
    names = list(_VERSIONS) if keys is None else list(keys)
    unknown = [k for k in names if k not in _VERSIONS]
    if unknown:
        raise ValueError(f"unknown version key(s) {unknown} (known: {', '.join(_VERSIONS)})")
    return {k: _VERSIONS[k]() for k in names}


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :mod:`platform` knows."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return cpu


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine(kind: str = "summary") -> dict[str, Any]:
    """The machine a result was measured on, as one of three records (their keys are fixed: each is
    part of documents already written):

    * ``"summary"`` -- a study's hardware line: python, torch, rnope, cpu (``platform.processor()``
      or the architecture), cores, cuda (the first GPU's name or None);
    * ``"bench"`` -- ``bench.json``: cpu (the model name from /proc/cpuinfo), cpu_count,
      cpu_capability, threads (torch's), cuda, python, torch, transformers, mkldnn, git_sha,
      load_average, platform;
    * ``"run"`` -- a training run's ``run.json`` ``hardware``: machine, processor, cpu_count,
      torch_threads, platform, and gpus (every CUDA device's name) only where there is a GPU.
    """
    torch = _torch()
    cuda = torch.cuda.is_available()
    if kind == "summary":
        return {"python": platform.python_version(), "torch": torch.__version__, "rnope": _rnope_version(),
                "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                "cuda": torch.cuda.get_device_name(0) if cuda else None}
    if kind == "bench":
        return {
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if cuda else None,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": _dist_version("transformers"),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "git_sha": git_commit(),
            "load_average": _load_average(),
            "platform": platform.platform(),
        }
    if kind == "run":
        hw: dict[str, Any] = {"machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                              "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
        if cuda:
            hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return hw
    raise ValueError(f"unknown machine record {kind!r} (known: summary, bench, run)")


# ---------------------------------------------------------------------------------------- output paths
def _check_parents(out: Path, label: str) -> None:
    """The nearest existing ancestor of ``out`` is a directory (so ``out`` can be created below it)."""
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{label} '{out}': '{parent}' is not a directory")
            break


def check_out_dir(out: str | os.PathLike, *, new: bool, label: str = "--out") -> Path:
    """Check an output directory without creating it; returns it as a Path.

    The rule: ``out`` is absent or a directory, and where it is absent, the nearest existing
    ancestor is a directory (``out`` can be created). ``new`` says what the command does there:

    * ``new=False`` -- it adds named files to the directory (evaluations, analysis, bench, train): an
      existing directory is accepted whatever it holds, also through a symbolic link;
    * ``new=True`` -- it creates the whole directory (HF export / import, convert, all at once with
      :func:`atomic_dir`): ``out`` must be absent or an empty directory, and not a symbolic link.

    ``label`` names the output in the messages (``--out 'x' exists and is not a directory``;
    ``output directory 'x' exists and is not empty``).
    """
    p = Path(out)
    if (new and p.is_symlink()) or (p.exists() and not p.is_dir()):
        raise ValueError(f"{label} '{p}' exists and is not a directory")
    if new and p.is_dir() and any(p.iterdir()):
        raise ValueError(f"{label} directory '{p}' exists and is not empty")
    _check_parents(p, label)
    return p


def check_new_dir(out: str | os.PathLike) -> Path:
    """``check_out_dir(out, new=True, label="output")``: ``out`` may be created as a new directory."""
    return check_out_dir(out, new=True, label="output")


def check_out_file(out: str | os.PathLike, *, label: str) -> Path:
    """Check an output file without creating it: not a directory, and its parent is (or can become)
    a directory; ``label`` names it in the messages (``--output 'x' is a directory``)."""
    p = Path(out)
    if p.is_dir():
        raise ValueError(f"{label} '{p}' is a directory")
    _check_parents(p, label)
    return p


def safe_name(name: str) -> str:
    """A name as it may appear in a file name: every run of characters other than ASCII letters,
    digits, ``.``, ``_`` and ``-`` becomes one ``_``, leading and trailing ``.`` / ``_`` are dropped,
    and an empty result is ``model`` (``swa (rnope-swa)`` -> ``swa_rnope-swa``, ``rnope#seed1`` ->
    ``rnope_seed1``)."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


# --------------------------------------------------------------------------------------- atomic writes
def _write_temp(path: Path, data: str | bytes) -> Path:
    """``data`` (text: UTF-8) in a new file beside ``path``, named ``.NAME.RANDOM.tmp``, flushed to
    disk; its mode is what a plain ``open`` would give (0666 less the umask). Removed on failure."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with (open(fd, "w", encoding="utf-8") if isinstance(data, str) else open(fd, "wb")) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: a temporary file beside it, renamed over it.
    A failure leaves ``path`` as it was (absent or its old content) and no temporary file. The
    parent directory must exist."""
    path = Path(path)
    tmp = _write_temp(path, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_files(out: str | os.PathLike, files: Mapping[str, str | bytes]) -> list[Path]:
    """Write ``{file name: text or bytes}`` into the directory ``out`` (created if missing), all or
    nothing: every file goes to a temporary file beside its target first, and only when all are
    written are they renamed into place; a failure while writing removes the temporaries and leaves
    every target as it was. Returns the paths written, in order."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    done: list[tuple[Path, Path]] = []
    try:
        for name, data in files.items():
            final = d / name
            done.append((_write_temp(final, data), final))
    except BaseException:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in done:
        os.replace(tmp, final)
    return [final for _, final in done]


def atomic_dir(out: Path, build: Callable[[Path], None]) -> Path:
    """Create the new directory ``out`` all or nothing: check it (:func:`check_new_dir`), run
    ``build(tmp)`` in a fresh directory ``.NAME.tmp-*`` beside it, rename that to ``out`` on success
    only; a failure removes the temporary directory."""
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


# ------------------------------------------------------------------------------------------------ text
def length_label(n: int) -> str:
    """A context length as tables and figures show it: whole multiples of 1024 as ``1k``, ``2k``,
    ``64k``; any other length (``512``, ``1000``, ``1536``) as its number."""
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table, cells written with ``str``: ``| a | b |`` / ``|---|---|`` / one line
    per row, joined by newlines (no newline at the end)."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)
