"""One writer per output directory: ``rnope train``, ``rnope reproduce`` and ``rnope export`` hold
a lock on their ``--out`` while they write it.

The lock is a file beside the directory (``PARENT/.NAME.lock``), so it works before the directory
exists (an export writes into a temporary directory and renames it at the end) and leaves nothing in
the output. It holds an advisory ``flock`` plus the holder's pid, host, command and start time. The
kernel drops a ``flock`` when its process dies, however it dies, so a lock file left by a killed
process does not block: the next writer finds it unlocked, says so, and takes it over. Where
``fcntl`` is missing (Windows) the pid in the file decides whether the holder is alive.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux / macOS
    fcntl = None

__all__ = ["OutLock", "lock_path"]


def lock_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.lock"


def _describe(info: dict) -> str:
    when = info.get("started")
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when)) if isinstance(when, (int, float)) else "?"
    cmd = info.get("command") or "?"
    if len(cmd) > 120:
        cmd = cmd[:117] + "..."
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {started}: {cmd}"


def _command() -> str:
    """This process's command line as a user typed it (``rnope train ...`` for the CLI)."""
    argv = sys.argv or [""]
    if argv[0].endswith(("rnope", "__main__.py")):
        return " ".join(["rnope", *argv[1:]])
    return " ".join([Path(sys.executable).name, *argv])


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return False
    return True


class OutLock:
    """Exclusive writer lock of an output directory; use as a context manager or call :meth:`release`.

    Raises ``ValueError`` (one line, naming the live holder) when another process holds it.
    ``what`` names the flag in messages (``--out``).
    """

    def __init__(self, out: str | os.PathLike, *, what: str = "--out", say=None):
        self.out, self.path, self.fd = Path(out), lock_path(out), None
        self.took_over: dict | None = None  # the holder recorded in a stale lock file we replaced
        while self.fd is None:
            self._try(what)
        if self.took_over and say is not None:
            say(f"rnope: note: taking over the stale lock of {_describe(self.took_over)} (that process is gone)")

    def _try(self, what: str) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise ValueError(f"{what} '{self.out}' is being written by another process ({_describe(_read(fd))}); "
                                     "wait for it to finish or choose another directory") from None
                # the holder may have removed the file between our open and our lock: lock the file at the path
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    return
                old = _read(fd)
            else:  # pragma: no cover - no flock: trust a live pid
                old = _read(fd)
                if old.get("pid") != os.getpid() and _pid_alive(old.get("pid")) and old.get("host") == socket.gethostname():
                    raise ValueError(f"{what} '{self.out}' is being written by another process ({_describe(old)}); "
                                     "wait for it to finish or choose another directory")
            self.took_over = old or None
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                    "command": _command()}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(info).encode())
            self.fd = fd
        except BaseException:
            if self.fd is None:
                os.close(fd)
            raise

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in that order: no one can lock a file about to vanish)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "OutLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
