"""Conversions and inference-time NoPE scaling inside a study (docs/convert.md, docs/nope_scale.md).

A profile's :class:`~.profiles.Conversion` rows start from a model the study trained: each seed's
``parent`` is converted to another layer pattern (:func:`rnope.convert.convert`, every weight kept)
and trained on with ``rnope train --init`` for ``convert_share`` of the parent's tokens (the
``adapt`` stage, shaped like ``long``: ``long_factor`` x longer sequences mixed 1:3 with sequences of
the training length, lr ``convert_lr``; docs/convert.md has what else was tried). Its
``nope_scales`` rows score a trained model or conversion with an inference-time NoPE scale
(:func:`scale_model`). Every row is evaluated exactly as the study's models are
(:meth:`.runner.Study.evaluate_one`) and reported in its own section (:func:`section`).
"""

from __future__ import annotations

import math
from typing import Any

from ..outputs import markdown_table, safe_name
from .profiles import ModelSpec, Profile
from .report import _EPS, _f, _pm, _seeds

__all__ = ["check_profile", "conversion_jobs", "extra_rows", "scale_model", "section"]

SCALE_MODES = ("none", "llama4", "log", "fitted")


def check_profile(p: Profile) -> None:
    """One line naming what is wrong with a profile's conversions or NoPE-scale rows."""
    models = {m.name for m in p.models}
    names = set(models)
    for c in p.conversions:
        if c.parent not in models:
            raise ValueError(f"profile {p.name!r}: conversion {c.name!r} starts from {c.parent!r}, which is not a model "
                             f"of the profile ({', '.join(sorted(models))})")
        if (c.to is None) == (not c.drop_pe):
            raise ValueError(f"profile {p.name!r}: conversion {c.name!r} needs exactly one of to= and drop_pe=True")
        if c.name in names:
            raise ValueError(f"profile {p.name!r}: the row name {c.name!r} is used twice")
        names.add(c.name)
    for row, mode in p.nope_scales:
        if row not in names:
            raise ValueError(f"profile {p.name!r}: nope_scales row {row!r} is neither a model nor a conversion of the profile")
        if mode.split(":")[0] not in SCALE_MODES[1:]:
            raise ValueError(f"profile {p.name!r}: nope_scales mode {mode!r} is not llama4, log, log:C or fitted")
    if not 0 < p.convert_share <= 1:
        raise ValueError(f"profile {p.name!r}: convert_share must be in (0, 1], got {p.convert_share}")


def _spec(p: Profile, row: str) -> ModelSpec:
    """The ModelSpec of a row (a model, or a conversion named by the preset of the pattern it becomes)."""
    for m in p.models:
        if m.name == row:
            return m
    c = next(c for c in p.conversions if c.name == row)
    return ModelSpec(c.name, c.to or "nope")


def conversion_jobs(study) -> list[tuple[ModelSpec, int, str, Any]]:
    """``(spec, seed, name, config)`` of every conversion run (for :meth:`.runner.Study._train_many`);
    ``config()`` converts the parent's trained checkpoint (once) and returns the run config."""
    p = study.p
    jobs = []
    for c in p.conversions:
        for s in range(study.seeds):
            name = study.seed_name(c.name, s)
            jobs.append((_spec(p, c.name), s, name, _config_fn(study, c, s, name)))
    return jobs


def _config_fn(study, c, seed: int, name: str):
    def make() -> dict[str, Any]:
        from ..convert import convert

        p = study.p
        parent = study.out / "runs" / safe_name(study.seed_name(c.parent, seed))
        init = study.out / "converted" / safe_name(name)
        if not (init / "config.json").exists():  # written whole or not at all
            init.parent.mkdir(parents=True, exist_ok=True)
            convert(parent, init, to=c.to, drop_pe=c.drop_pe, window=None if c.drop_pe else p.window)
        steps = p.convert_steps()
        return {
            "init": str(init), "data": "builtin", "cache_dir": str(study.out / "cache"), "seed": seed,
            "batch_size": p.batch_size, "lr": p.convert_lr, "min_lr": p.convert_lr / 10,
            "synthetic_ratio": p.mix_synthetic_ratio, "synthetic_kinds": list(p.mix_kinds),
            "eval_every": 0, "save_every": 500, "keep": 1,
            "stages": [{"name": "adapt", "steps": steps, "seq_len": p.seq_len * p.long_factor, "short_seq_len": p.seq_len,
                        "long_ratio": 0.25, "synthetic_ratio": p.long_synthetic_ratio, "warmup": max(1, steps // 10)}],
        }

    return make


def extra_rows(study) -> list[tuple[ModelSpec, int, str, str, str | None]]:
    """``(spec, seed, name, run, nope_scale)`` of the conversions, then of the NoPE-scaled rows."""
    p = study.p
    rows = [(_spec(p, c.name), s, study.seed_name(c.name, s), study.seed_name(c.name, s), None)
            for c in p.conversions for s in range(study.seeds)]
    for row, mode in p.nope_scales:
        rows += [(_spec(p, row), s, study.seed_name(f"{row}+{mode}", s), study.seed_name(row, s), mode)
                 for s in range(study.seeds)]
    return rows


def scale_model(model, tokenizer, mode: str, train_len: int) -> dict[str, Any]:
    """Scale ``model``'s NoPE queries in place by ``mode`` with L_train = ``train_len`` (the longest
    length the study trains at) and return what was applied.

    ``llama4``: Llama 4's β = 1 + 0.1·ln(floor((p+1)/F) + 1) with its floor F placed at ``train_len``
    (Llama 4's 8192 lies past every length a study evaluates, where it would be the identity);
    ``log`` / ``log:C``: β = 1 + c·ln(max(1, (p+1)/L_train)), c = 0.1 or C; ``fitted``: ``log``
    with the c that minimises held-out NLL at 2-4x ``train_len`` (:func:`rnope.nope_scale.fit`)."""
    from ..nope_scale import DEFAULT_C, fit, parse_mode, set_nope_scale

    kind, c = parse_mode(mode, "nope_scale")
    if kind == "llama4":
        cfg = set_nope_scale(model, "llama4", floor=train_len)
        return {"mode": mode, "c": cfg.nope.scale, "floor": train_len}
    if kind == "log":
        c = DEFAULT_C if c is None else c
        set_nope_scale(model, "log", c, train_seq_len=train_len)
        return {"mode": mode, "c": c, "train_seq_len": train_len}
    if kind == "fitted":
        r = fit(model, tokenizer, train_len)
        set_nope_scale(model, "log", r["c"], train_seq_len=train_len)
        return {"mode": mode, "c": r["c"], "train_seq_len": train_len, "nll": r["nll"], "nll_c0": r["nll_c0"]}
    set_nope_scale(model, "none")
    return {"mode": "none"}


# ---- the report ---------------------------------------------------------------------------------
def _fmt(x) -> str:
    return _f(x, 2)


def section(results: dict, profile: Profile) -> list[str]:
    """``## Conversions and inference-time NoPE scaling``: what each row is, its numbers next to the
    model it came from, per seed, and the verdicts (every one on the primary column)."""
    rows = results.get("conversions") or {}
    if not rows:
        return []
    ms = results["models"]
    allm = {**ms, **rows}
    L, col = profile.seq_len, profile.primary
    long_len = profile.long_factor * L
    facs = profile.niah_factors
    lengths = [str(f * L) for f in facs]
    steps = profile.convert_steps()
    out = ["", "## Conversions and inference-time NoPE scaling", "",
           "Rows made from the study's trained models, evaluated exactly as they are (same items, same columns):", ""]
    for c in profile.conversions:
        what = "every layer NoPE with full attention (DroPE)" if c.drop_pe else f"the `{c.to}` pattern (window {profile.window})"
        out.append(f"- `{c.name}`: each seed's `{c.parent}` converted to {what} by `rnope convert`, every weight kept, then "
                   f"trained on with `rnope train --init` for {profile.convert_share:.0%} of its parent's tokens: {steps} "
                   f"step(s) shaped like the `long` stage ({profile.long_factor * L}-token sequences mixed 1:3 with {L}-token "
                   f"ones, batch {profile.batch_size}, lr {profile.convert_lr:g}).")
    modes = sorted({m for _, m in profile.nope_scales})
    if modes:
        out.append(f"- `ROW+MODE`: ROW scored with `--nope-scale MODE` on its NoPE layers, L_train = {long_len} (the longest "
                   "length the study trains at; β = 1 below it in every mode, so 1× is untouched): "
                   + "; ".join(_MODE_TEXT.get(m.split(":")[0], m) for m in modes) + ".")
    order = list(dict.fromkeys([c.parent for c in profile.conversions] + [c.name for c in profile.conversions]
                               + [x for r, m in profile.nope_scales for x in (r, f"{r}+{m}")]))
    order = [n for n in order if n in allm]
    table = []
    for n in order:
        m = allm[n]
        p1 = m.get("ppl", {}).get(str(L))
        table.append([n, _pm(m["val_loss"], m["spread"]["val_loss"], 3), _pm(p1, m["spread"].get("ppl", {}).get(str(L)), 2),
                      *(_pm(m["niah"].get(col, {}).get(x), m["spread"]["niah"].get(col, {}).get(x), 2) for x in lengths)])
    out += ["", f"`{col}`, {profile.niah_samples * len(profile.niah_depths)} items per length; "
            f"perplexity at 1× ({L} tokens) as in the perplexity table:", "",
            markdown_table(["row", f"val loss @ {L}", "ppl 1×", *(f"{f}×" for f in facs)], table)]
    if results["setup"].get("seeds", 1) > 1:
        out += ["", "Per seed:", "",
                markdown_table(["row", *(f"{f}×" for f in facs)],
                               [[n, *(_seeds(allm[n]["per_seed"]["niah"].get(col, {}).get(x, [])) for x in lengths)] for n in order])]
    fitted = [n for n in order if n.endswith("+fitted")]
    if fitted:
        out += ["", "Fitted c per seed: " + "; ".join(f"`{n}` {_seeds(allm[n].get('nope_scale_c', []))}" for n in fitted) + "."]
    out += ["", "Verdicts (primary column; ✅ holds in every seed where a seed target is named, ℹ️ reported as measured):", ""]
    out += verdicts(ms, rows, profile)
    return out


_MODE_TEXT = {
    "llama4": "`llama4`: β = 1 + 0.1·ln(floor((p+1)/F) + 1), Llama 4's curve with its floor F at L_train",
    "log": "`log`: β = 1 + c·ln(max(1, (p+1)/L_train)), c = 0.1",
    "fitted": "`fitted`: `log` with c fitted per seed on held-out prose (the NLL of tokens 2-4× L_train)",
}


def verdicts(ms: dict, rows: dict, profile: Profile) -> list[str]:
    L, col = profile.seq_len, profile.primary
    allm = {**ms, **rows}

    def vals(n: str, f: int) -> list[float]:
        return [v for v in allm.get(n, {}).get("per_seed", {}).get("niah", {}).get(col, {}).get(str(f * L), []) if v is not None]

    def mean(n: str, f: int):
        v = allm.get(n, {}).get("niah", {}).get(col, {}).get(str(f * L))
        return None if v is None or math.isnan(v) else v

    def show(n: str, f: int) -> str:
        v = vals(n, f)
        return f"{_fmt(mean(n, f))}" + (f" (seeds {_seeds(v)})" if len(v) > 1 else "")

    out = []
    facs = profile.niah_factors
    f8 = 8 if 8 in facs else max(facs)
    for c in profile.conversions:
        if c.name not in rows or c.parent not in ms:
            continue
        a, b = rows[c.name], ms[c.parent]
        if c.to is not None:
            v = mean(c.name, f8)
            ok = (v is not None and v >= 0.9 - _EPS and all(x >= 0.8 - _EPS for x in vals(c.name, f8))
                  and all(x < 0.2 for x in vals(c.parent, f8)))
            out.append(f"- {'✅' if ok else '❌'} {c.name} retrieves at {f8}× where its parent {c.parent} does not: "
                       f"{show(c.name, f8)} vs {c.parent} {show(c.parent, f8)} (target: ≥ 0.9, every seed ≥ 0.8, where the "
                       "parent is < 0.2 in every seed).")
            past = [f for f in facs if f > 1 and vals(c.parent, f) and all(x < 0.2 for x in vals(c.parent, f))]
            if past and past[0] != f8:
                f = past[0]
                out.append(f"- ℹ️ past its parent's reach, at {f}× ({c.parent} {show(c.parent, f)}): {c.name} {show(c.name, f)}.")
        rel = (a["val_loss"] - b["val_loss"]) / b["val_loss"]
        if c.drop_pe:
            out.append(f"- ℹ️ {c.name} (DroPE) val loss {a['val_loss']:.3f} vs its parent's {b['val_loss']:.3f} ({100 * rel:+.1f}%); "
                       f"NIAH at 1× / {f8}× / {max(facs)}×: {show(c.name, 1)} / {show(c.name, f8)} / {show(c.name, max(facs))}.")
            continue
        ok = all(x <= y * 1.02 for x, y in zip(a["per_seed"]["val_loss"], b["per_seed"]["val_loss"]))
        out.append(f"- {'✅' if ok else '❌'} {c.name} val loss {a['val_loss']:.3f} vs its parent's {b['val_loss']:.3f} "
                   f"({100 * rel:+.1f}%; target: within 2% in every seed).")
    for row, mode in profile.nope_scales:
        n = f"{row}+{mode}"
        if n not in rows or row not in allm:
            continue
        far = [f for f in facs if f >= 16] or [max(facs)]
        gains = {f: (mean(n, f) or 0.0) - (mean(row, f) or 0.0) for f in far}
        p0, p1 = allm[row]["ppl"].get(str(L)), rows[n]["ppl"].get(str(L))
        cost = None if not p0 or p1 is None else p1 / p0 - 1
        text = (", ".join(f"{f}× {show(n, f)} vs {show(row, f)} ({gains[f]:+.2f})" for f in far)
                + f"; perplexity at 1× {_fmt(p1)} vs {_fmt(p0)} ({'–' if cost is None else f'{100 * cost:+.2f}%'})")
        if mode == "fitted" and row in ms:
            ok = all(g >= 0.1 - _EPS for g in gains.values()) and cost is not None and cost <= 0.005
            out.append(f"- {'✅' if ok else '❌'} `fitted` NoPE scaling on {row}: {text} (target: +0.1 at "
                       f"{' and '.join(f'{f}×' for f in far)}, ≤ 0.5% perplexity at 1×).")
        else:
            out.append(f"- ℹ️ `{mode}` on {row}: {text}.")
    return out
