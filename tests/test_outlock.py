"""One writer per output directory: a live holder is named and refused, a dead one's lock is taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rnope
from rnope.cli import main
from rnope.outlock import OutLock, lock_path

from .conftest import tiny_model

HOLD = ("import sys, time\n"
        "from rnope.outlock import OutLock\n"
        "lock = OutLock(sys.argv[1])\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n")


@pytest.fixture
def holder(tmp_path):
    """A live process holding the lock of ``tmp_path / 'out'``."""
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        yield out, p.pid
    finally:
        p.kill()
        p.wait()


def _refusal(out: Path, pid: int) -> str:
    return f"rnope: error: --out '{out}' is being written by another process (pid {pid} on "


def test_a_live_writer_is_named_and_a_second_train_export_or_study_refused(holder, tmp_path, capsys):
    out, pid = holder
    ck = rnope.save(tmp_path / "ck", tiny_model("rnope-swa"))
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = [
        ["train", "--preset", "rnope-swa", "--out", str(out), "--max-steps", "1"],
        ["export", "--ckpt", str(ck), "--out", str(out)],
        ["reproduce", "--profile", "smoke", "--out", str(out)],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith(_refusal(out, pid)) and "\n" not in err, err
        assert err.endswith("); wait for it to finish or choose another directory"), err
        assert ": python" in err and f"{out}); wait" in err  # the holder's command line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, the lock left alone
    assert json.loads(lock_path(out).read_text())["pid"] == pid


def test_a_dead_writers_lock_is_taken_over_and_removed_after(tmp_path, capsys):
    out = tmp_path / "run"
    # what a SIGKILLed writer leaves: the file with its pid, but no lock held (the kernel dropped it)
    lock_path(out).write_text(json.dumps({"pid": 2**22 + 12345, "host": "h", "started": 0, "command": "rnope train"}))
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": f"document {i}: " + "words and more words. " * 40}) + "\n" for i in range(20)))
    assert main(["train", "--preset", "rnope-swa", "--model.d_model", "32", "--model.d_ff", "64", "--seq-len", "64",
                 "--batch-size", "1", "--max-steps", "1", "--eval-every", "0", "--synthetic-ratio", "0",
                 "--data", str(data), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"rnope: note: taking over the stale lock of pid {2**22 + 12345} on h, started 1970-01-01 00:00:00 UTC: rnope train " \
           "(that process is gone)" in err
    assert not lock_path(out).exists() and (out / "checkpoints" / "step_1").is_dir()


def test_lock_in_one_process_is_exclusive_and_released(tmp_path):
    out = tmp_path / "x"
    with OutLock(out) as a:
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
        with pytest.raises(ValueError, match=r"^--out '.*x' is being written by another process \(pid \d+ on "):
            OutLock(out)
        assert a.fd is not None
    assert not lock_path(out).exists()
    OutLock(out).release()  # free again
    assert not (tmp_path / "x").exists()  # the lock lives beside the directory, not in it
