import os

import pytest

from rnope.cli import main


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """One finished study of the tiny 'smoke' profile (two models, two conversions, two NoPE-scaled rows)."""
    out = tmp_path_factory.mktemp("study") / "s"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    assert main(["reproduce", "--profile", "smoke", "--out", str(out), "--jobs", "1"]) == 0
    return out
