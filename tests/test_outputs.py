"""rnope.outputs: output-directory rules and their messages, atomic writes, safe names, length
labels, Markdown tables, versions / machine records and the source hash."""

import os
import re
from pathlib import Path

import pytest

import rnope
from rnope import outputs
from rnope.outputs import (
    atomic_dir,
    atomic_write_text,
    check_new_dir,
    check_out_dir,
    check_out_file,
    code,
    length_label,
    machine,
    markdown_table,
    safe_name,
    source_hash,
    versions,
    write_files,
)


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


# ------------------------------------------------------------------------------------ check_out_dir
@pytest.mark.parametrize("new", [False, True])
def test_a_missing_directory_below_a_directory_is_accepted(tmp_path, new):
    assert check_out_dir(tmp_path / "a" / "b", new=new) == tmp_path / "a" / "b"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_out_dir(str(empty), new=new) == empty
    assert not (tmp_path / "a").exists()  # checked, never created


def test_adding_files_accepts_a_directory_that_holds_files(tmp_path):
    (tmp_path / "old.json").write_text("{}")
    assert check_out_dir(tmp_path, new=False) == tmp_path
    link = tmp_path.parent / f"{tmp_path.name}-link"
    link.symlink_to(tmp_path, target_is_directory=True)
    try:
        assert check_out_dir(link, new=False) == link  # files are added inside the linked directory
    finally:
        link.unlink()


def test_a_new_directory_refuses_one_that_holds_files_or_is_a_link(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(ValueError, match=f"^output directory '{re.escape(str(full))}' exists and is not empty$"):
        check_new_dir(full)
    with pytest.raises(ValueError, match=f"^--out directory '{re.escape(str(full))}' exists and is not empty$"):
        check_out_dir(full, new=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    link = tmp_path / "link"
    link.symlink_to(empty, target_is_directory=True)
    with pytest.raises(ValueError, match=f"^output '{re.escape(str(link))}' exists and is not a directory$"):
        check_new_dir(link)  # the final rename would replace the link, not fill its target


@pytest.mark.parametrize("new,label,prefix", [(False, "--out", "--out"), (True, "--out", "--out"), (False, "output", "output")])
def test_a_file_in_the_way_is_refused_with_its_message(tmp_path, new, label, prefix):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match=f"^{re.escape(prefix)} '{re.escape(str(f))}' exists and is not a directory$"):
        check_out_dir(f, new=new, label=label)
    below = f / "sub" / "out"
    with pytest.raises(ValueError, match=f"^{re.escape(prefix)} '{re.escape(str(below))}': '{re.escape(str(f))}' is not a directory$"):
        check_out_dir(below, new=new, label=label)


def test_check_new_dir_messages_are_the_export_ones(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match=f"^output '{re.escape(str(f))}' exists and is not a directory$"):
        check_new_dir(f)
    with pytest.raises(ValueError, match=f"^output '{re.escape(str(f / 'x'))}': '{re.escape(str(f))}' is not a directory$"):
        check_new_dir(f / "x")


def test_check_out_file(tmp_path):
    assert check_out_file(tmp_path / "d" / "o.jsonl", label="--output") == tmp_path / "d" / "o.jsonl"
    with pytest.raises(ValueError, match=f"^--output '{re.escape(str(tmp_path))}' is a directory$"):
        check_out_file(tmp_path, label="--output")
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(ValueError, match=f"^--out '{re.escape(str(f / 'o'))}': '{re.escape(str(f))}' is not a directory$"):
        check_out_file(f / "o", label="--out")


# ------------------------------------------------------------------------------------ atomic writes
def test_atomic_write_text_writes_replaces_and_leaves_nothing_else(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_text(p, "één\n")
    assert p.read_bytes() == "één\n".encode()
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.json"]
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert (p.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)  # the mode a plain write gives


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    p = tmp_path / "a.json"
    p.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(p, "half \ud800 written")  # fails while writing
    assert p.read_text() == "old" and _leftovers(tmp_path) == []
    new = tmp_path / "new.json"
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(new, "\ud800")
    assert not new.exists() and _leftovers(tmp_path) == []

    def no_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.os, "replace", no_rename)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(p, "new")
    assert p.read_text() == "old" and _leftovers(tmp_path) == []


def test_write_files_is_all_or_nothing(tmp_path):
    out = tmp_path / "out"
    paths = write_files(out, {"a.md": "text", "b.png": b"\x89PNG"})
    assert paths == [out / "a.md", out / "b.png"]
    assert (out / "a.md").read_text() == "text" and (out / "b.png").read_bytes() == b"\x89PNG"
    with pytest.raises(UnicodeEncodeError):
        write_files(out, {"a.md": "changed", "c.md": "new", "d.md": "\ud800"})
    assert (out / "a.md").read_text() == "text" and not (out / "c.md").exists()
    assert sorted(p.name for p in out.iterdir()) == ["a.md", "b.png"]


def test_atomic_dir_renames_on_success_only(tmp_path):
    def build(d: Path) -> None:
        (d / "config.json").write_text("{}")

    out = atomic_dir(tmp_path / "new", build)
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask  # not mkdtemp's 0700

    def fail(d: Path) -> None:
        (d / "half").write_text("x")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        atomic_dir(tmp_path / "other", fail)
    assert not (tmp_path / "other").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(ValueError, match="exists and is not empty"):
        atomic_dir(out, build)


# ----------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("name,safe", [
    ("swa (rnope-swa)", "swa_rnope-swa"),
    ("rnope-swa#seed1", "rnope-swa_seed1"),
    ("rnope@theta=1000000", "rnope_theta_1000000"),
    ("a/b\\c", "a_b_c"),
    ("../etc", "etc"),
    ("..", "model"),
    ("", "model"),
    ("modèle", "mod_le"),
    ("run-step_100.v2", "run-step_100.v2"),
])
def test_safe_name(name, safe):
    assert safe_name(name) == safe


def test_study_run_directories_keep_their_names():
    """A study names its run directories with safe_name: for every model of every profile, and any
    seed, the name is what the per-character rule that wrote existing studies gives."""
    from rnope.reproduce.profiles import PAPER_MODELS, PROFILES, RELATIVES

    def per_char(name: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

    names = {m.name for p in PROFILES.values() for m in p.models} | {m.name for m in PAPER_MODELS + RELATIVES}
    for n in names:
        for run in (n, f"{n}#seed0", f"{n}#seed12"):
            assert safe_name(run) == per_char(run), run


@pytest.mark.parametrize("n,label", [(1, "1"), (512, "512"), (1000, "1000"), (1024, "1k"), (1536, "1536"),
                                     (2048, "2k"), (65536, "64k"), (131072, "128k"), (0, "0")])
def test_length_label(n, label):
    assert length_label(n) == label


def test_markdown_table():
    assert markdown_table(["model", 1024, "x"], [["a", 1.5, None], [2, "–", ""]]) == (
        "| model | 1024 | x |\n"
        "|---|---|---|\n"
        "| a | 1.5 | None |\n"
        "| 2 | – |  |"
    )
    assert markdown_table(("a", "b"), iter([])) == "| a | b |\n|---|---|"


# ------------------------------------------------------------------------------ versions and machine
def test_versions_full_and_selected():
    v = versions()
    assert list(v) == ["rnope", "git_commit", "python", "torch", "cuda", "platform", "numpy", "tokenizers", "transformers",
                       "lm_eval"]
    assert v["rnope"] == rnope.__version__
    import numpy
    import torch

    assert v["torch"] == torch.__version__ and v["numpy"] == numpy.__version__
    assert versions(("rnope", "torch", "numpy", "python")) == {"rnope": rnope.__version__, "torch": torch.__version__,
                                                                "numpy": numpy.__version__, "python": v["python"]}
    with pytest.raises(ValueError, match="unknown version key"):
        versions(["rnope", "nope"])


def test_machine_records_keep_their_keys():
    import torch

    assert list(machine()) == ["python", "torch", "rnope", "cpu", "cores", "cuda"]
    assert list(machine("bench")) == ["cpu", "cpu_count", "cpu_capability", "threads", "cuda", "python", "torch", "transformers",
                                      "mkldnn", "git_sha", "load_average", "platform"]
    run = ["machine", "processor", "cpu_count", "torch_threads", "platform"]
    assert list(machine("run")) == (run + ["gpus"] if torch.cuda.is_available() else run)
    with pytest.raises(ValueError, match="unknown machine record"):
        machine("laptop")


# ---------------------------------------------------------------------------------------- provenance
def test_source_hash_is_stable_and_covers_the_package(tmp_path, monkeypatch):
    assert outputs.PACKAGE == Path(rnope.__file__).resolve().parent
    h = source_hash()
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    source_hash.cache_clear()
    assert source_hash() == h  # recomputed from the files: the same
    assert code() == {"source": h, "git": outputs.git_commit()}

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.json").write_text("{}")
    (pkg / "notes.md").write_text("not hashed")
    monkeypatch.setattr(outputs, "PACKAGE", pkg)
    try:
        source_hash.cache_clear()
        first = source_hash()
        source_hash.cache_clear()
        assert source_hash() == first
        (pkg / "notes.md").write_text("changed, still not hashed")
        source_hash.cache_clear()
        assert source_hash() == first
        (pkg / "sub" / "b.json").write_text('{"k": 1}')
        source_hash.cache_clear()
        assert source_hash() != first
    finally:
        source_hash.cache_clear()  # the real package's hash again for later tests
