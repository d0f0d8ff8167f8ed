"""A study's conversions and NoPE-scaled rows (rnope/reproduce/conversions.py)."""

import dataclasses
import json

import pytest

from rnope.reproduce.profiles import Conversion, get_profile

pytestmark = pytest.mark.slow

EXTRA = {"rope-to-rnope-swa", "rope-drope", "rnope-swa+fitted", "rope-drope+log"}


def test_conversion_rows_are_their_own_section_of_results_and_report(study):
    res = json.loads((study / "results.json").read_text())
    assert set(res["models"]) == {"rope", "rnope-swa"}  # the paper's tables hold the profile's models only
    assert set(res["conversions"]) == EXTRA
    for m in res["conversions"].values():  # scored exactly as the models are: every column and length
        assert set(m["niah"]) == {"heldout/essay", "passkey/noise", "heldout/noise"}
        assert all(set(c) == {"256", "512"} for c in m["niah"].values()) and set(m["ppl"]) == {"256", "512"}
    report = (study / "REPORT.md").read_text()
    main, conv = report.split("## Conversions and inference-time NoPE scaling")
    assert "rope-drope" not in main and "rope-to-rnope-swa" not in main
    assert ("- `rope-to-rnope-swa`: each seed's `rope` converted to the `rnope-swa` pattern (window 32) by `rnope convert`, "
            "every weight kept, then trained on with `rnope train --init` for 10% of its parent's tokens: 1 step(s) "
            "shaped like the `long` stage (512-token sequences mixed 1:3 with 256-token ones, batch 2, lr 0.002).") in conv
    for row in ("rope", *EXTRA):
        assert f"| {row} | " in conv
    assert "rope-to-rnope-swa val loss" in conv and "- ℹ️ rope-drope (DroPE) val loss" in conv
    assert "`fitted` NoPE scaling on rnope-swa: 2× " in conv and "- ℹ️ `log` on rope-drope: 2× " in conv


def test_a_conversion_starts_from_its_trained_parent_and_trains_on(study):
    parent = (study / "runs" / "rope" / "checkpoints").resolve()
    conf = json.loads((study / "converted" / "rope-to-rnope-swa" / "config.json").read_text())
    assert conf["model"]["pattern"] == "SSSN" and conf["model"]["window"] == 32
    assert conf["converted_from"]["pattern"] == "R" and conf["converted_from"]["path"].startswith(str(parent))
    assert json.loads((study / "converted" / "rope-drope" / "config.json").read_text())["model"]["pattern"] == "N"
    run = json.loads((study / "runs" / "rope-to-rnope-swa" / "run.json").read_text())["run"]
    assert run["init"] == str((study / "converted" / "rope-to-rnope-swa").resolve())
    assert get_profile("smoke").convert_steps() == 1
    assert [(s["name"], s["steps"], s["seq_len"], s["short_seq_len"], s["long_ratio"]) for s in run["stages"]] == [
        ("adapt", 1, 512, 256, 0.25)]
    # the adapt stage trains on 10 % of the parent's tokens, in steps shaped like the long stage's
    conv = get_profile("convert")
    assert conv.tokens_per_model() == 3_194_880 and conv.convert_steps() == 319_488 // (8 * 4 * 128) == 78


def test_a_scaled_row_is_its_model_with_nope_queries_scaled_past_the_longest_trained_length(study):
    base = json.loads((study / "evals" / "rnope-swa.json").read_text())
    fitted = json.loads((study / "evals" / "rnope-swa_fitted.json").read_text())
    assert fitted["nope_scale"]["mode"] == "fitted" and fitted["nope_scale"]["train_seq_len"] == 512
    c = fitted["nope_scale"]["c"]
    assert 0.0 <= c <= 1.0 and fitted["nope_scale"]["nll"] <= fitted["nope_scale"]["nll_c0"]
    assert fitted["config"]["nope"] == {"temperature": "log", "scale": c, "floor": 512}
    # beta = 1 below L_train: at 1x (256 tokens) the scaled row is exactly its model
    assert fitted["val_loss"] == base["val_loss"] and fitted["ppl"]["256"] == base["ppl"]["256"]
    assert fitted["niah_cells"]["heldout/essay"][0] == base["niah_cells"]["heldout/essay"][0]
    log = json.loads((study / "evals" / "rope-drope_log.json").read_text())
    assert log["nope_scale"] == {"mode": "log", "c": 0.1, "train_seq_len": 512}
    assert log["config"]["nope"] == {"temperature": "log", "scale": 0.1, "floor": 512}
    res = json.loads((study / "results.json").read_text())["conversions"]
    assert res["rnope-swa+fitted"]["nope_scale_c"] == [c]


def test_scale_model_modes():
    import torch

    from rnope.config import ModelConfig
    from rnope.model import Transformer
    from rnope.reproduce.conversions import scale_model

    model = Transformer(ModelConfig(n_layer=4, d_model=32, n_head=2, n_kv_head=1, d_ff=64, vocab_size=64, pattern="SSSN",
                                    window=8, max_seq_len=64))
    assert scale_model(model, None, "llama4", 128) == {"mode": "llama4", "c": 0.1, "floor": 128}
    assert model.config.nope.temperature == "llama4" and model.config.nope.floor == 128
    assert scale_model(model, None, "log:0.3", 128) == {"mode": "log:0.3", "c": 0.3, "train_seq_len": 128}
    assert (model.config.nope.temperature, model.config.nope.scale, model.config.nope.floor) == ("log", 0.3, 128)
    assert scale_model(model, None, "none", 128) == {"mode": "none"} and model.config.nope.temperature == "none"
    x = torch.randint(0, 64, (1, 16))
    ref = model(x)
    scale_model(model, None, "log", 16)  # every position below L_train: beta = 1, the same logits
    assert torch.equal(model(x), ref)


@pytest.mark.parametrize("change, message", [
    (dict(conversions=(Conversion("x", "nope", to="rnope-swa"),)),
     "profile 'smoke': conversion 'x' starts from 'nope', which is not a model of the profile (rnope-swa, rope)"),
    (dict(conversions=(Conversion("x", "rope"),)), "profile 'smoke': conversion 'x' needs exactly one of to= and drop_pe=True"),
    (dict(conversions=(Conversion("x", "rope", to="swa", drop_pe=True),)),
     "profile 'smoke': conversion 'x' needs exactly one of to= and drop_pe=True"),
    (dict(conversions=(Conversion("rope", "rope", drop_pe=True),)), "profile 'smoke': the row name 'rope' is used twice"),
    (dict(nope_scales=(("swa", "log"),)),
     "profile 'smoke': nope_scales row 'swa' is neither a model nor a conversion of the profile"),
    (dict(nope_scales=(("rnope-swa", "cubic"),)), "profile 'smoke': nope_scales mode 'cubic' is not llama4, log, log:C or fitted"),
    (dict(convert_share=0.0), "profile 'smoke': convert_share must be in (0, 1], got 0.0"),
])
def test_bad_conversion_profiles_are_refused_before_anything_is_written(tmp_path, change, message):
    from rnope.reproduce import run_study

    prof = dataclasses.replace(get_profile("smoke"), **change)
    with pytest.raises(ValueError) as e:
        run_study(prof, tmp_path / "s", jobs=1, progress=False)
    assert str(e.value) == message
    assert not (tmp_path / "s").exists()


def _row(per_seed, losses, ppl1, prof):
    L, col = prof.seq_len, prof.primary
    cols = {str(f * L): [p[i] for p in per_seed] for i, f in enumerate(prof.niah_factors)}
    return {"niah": {col: {k: sum(v) / len(v) for k, v in cols.items()}}, "per_seed": {"niah": {col: cols}, "val_loss": losses},
            "val_loss": sum(losses) / len(losses), "ppl": {str(L): ppl1}}


def test_conversion_verdicts():
    from rnope.reproduce.conversions import verdicts

    prof = get_profile("convert")  # factors 1..32, training length 128
    assert prof.niah_factors == (1, 2, 4, 8, 16, 32) and prof.seq_len == 128
    ms = {"rope": _row([[0.9, 0.9, 0.8, 0.1, 0.0, 0.0], [0.8, 0.9, 0.7, 0.15, 0.0, 0.0]], [4.30, 4.30], 90.0, prof),
          "rnope-swa": _row([[1.0, 1.0, 1.0, 0.9, 0.6, 0.4]] * 2, [4.25, 4.25], 88.0, prof)}
    rows = {"rope-to-rnope-swa": _row([[1.0, 1.0, 1.0, 0.95, 0.9, 0.8], [1.0, 1.0, 0.9, 0.85, 0.8, 0.7]], [4.35, 4.37], 91.0, prof),
            "rope-drope": _row([[0.5, 0.2, 0.0, 0.0, 0.0, 0.0]] * 2, [4.60, 4.60], 110.0, prof),
            "rnope-swa+fitted": _row([[1.0, 1.0, 1.0, 0.95, 0.8, 0.5]] * 2, [4.25, 4.25], 88.0, prof),
            "rnope-swa+log": _row([[1.0, 1.0, 1.0, 0.9, 0.7, 0.5]] * 2, [4.25, 4.25], 88.0, prof)}
    out = verdicts(ms, rows, prof)
    assert ("- ✅ rope-to-rnope-swa retrieves at 8× where its parent rope does not: 0.90 (seeds 0.95 / 0.85) vs rope "
            "0.12 (seeds 0.10 / 0.15) (target: ≥ 0.9, every seed ≥ 0.8, where the parent is < 0.2 in every seed).") in out
    assert ("- ✅ rope-to-rnope-swa val loss 4.360 vs its parent's 4.300 (+1.4%; target: within 2% in every seed).") in out
    assert out[2].startswith("- ℹ️ rope-drope (DroPE) val loss 4.600 vs its parent's 4.300 (+7.0%); NIAH at 1× / 8× / 32×: "
                             "0.50 (seeds 0.50 / 0.50) / 0.00")
    assert ("- ✅ `fitted` NoPE scaling on rnope-swa: 16× 0.80 (seeds 0.80 / 0.80) vs 0.60 (seeds 0.60 / 0.60) (+0.20), "
            "32× 0.50 (seeds 0.50 / 0.50) vs 0.40 (seeds 0.40 / 0.40) (+0.10); perplexity at 1× 88.00 vs 88.00 (+0.00%) "
            "(target: +0.1 at 16× and 32×, ≤ 0.5% perplexity at 1×).") in out
    assert any(v.startswith("- ℹ️ `log` on rnope-swa: 16× 0.70 (seeds 0.70 / 0.70) vs 0.60") for v in out)
    # a parent that still retrieves at 8x, a seed past 2 %, a gain below 0.1: each claim fails
    ms["rope"] = _row([[0.9, 0.9, 0.8, 0.3, 0.1, 0.0], [0.8, 0.9, 0.7, 0.15, 0.0, 0.0]], [4.30, 4.30], 90.0, prof)
    rows["rope-to-rnope-swa"]["per_seed"]["val_loss"] = [4.30, 4.40]
    rows["rnope-swa+fitted"] = _row([[1.0, 1.0, 1.0, 0.95, 0.8, 0.45]] * 2, [4.25, 4.25], 88.0, prof)
    out = verdicts(ms, rows, prof)
    assert out[0].startswith("- ❌ rope-to-rnope-swa retrieves at 8× where its parent rope does not: 0.90")
    assert out[1] == "- ℹ️ past its parent's reach, at 16× (rope 0.05 (seeds 0.10 / 0.00)): rope-to-rnope-swa 0.85 (seeds 0.90 / 0.80)."
    assert out[2].startswith("- ❌ rope-to-rnope-swa val loss")
    assert any(v.startswith("- ❌ `fitted` NoPE scaling on rnope-swa") for v in out)
