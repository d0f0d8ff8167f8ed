"""``results.json`` and ``REPORT.md`` of a study: tables shaped like the paper's, next to its numbers."""

from __future__ import annotations

import math
import statistics
from typing import Any

from ..outputs import markdown_table, safe_name

# the paper's §3 (arXiv 2501.18795; 8B models, as reported there)
PAPER_VAL = {"rope": 1.52, "qknorm": 1.53, "nope": 1.58}
PAPER_NEEDLES_65K = {"rope": 9.82, "qknorm": 7.93, "nope": 9.03}
PAPER_SEGMENTS = {  # model -> {length label: (begin, needle, context, end)}
    "rope": {"8k": (0.386, 0.033, 0.381, 0.200), "32k": (0.354, 0.020, 0.434, 0.192), "128k": (0.346, 0.001, 0.475, 0.178)},
    "qknorm": {"8k": (0.024, 0.017, 0.802, 0.157), "32k": (0.006, 0.006, 0.852, 0.136), "128k": (0.001, 0.0004, 0.899, 0.099)},
    "nope": {"8k": (0.306, 0.045, 0.450, 0.199), "32k": (0.281, 0.033, 0.498, 0.189), "128k": (0.085, 0.007, 0.816, 0.093)},
}
PAPER_ENTROPY = {"rope": (6.02, 6.95, 7.62), "qknorm": (10.71, 12.46, 14.14)}
PAPER_LABOUR = {  # NoPE needle, NoPE end, RoPE needle, RoPE end, needles-128k
    "rope": (None, None, 0.0201, 0.1915, 7.40),
    "rnope": (0.0765, 0.0287, 0.0004, 0.3142, 8.04),
    "rnope@theta=1000000": (0.0712, 0.0303, 0.0046, 0.2611, 7.02),  # closest paper row: RNoPE-2M
    "rnope-swa": (0.0742, 0.0321, None, None, 9.56),
}
SEG = ("begin", "needle", "context", "end")

GATE = 0.8  # a model "retrieves at 1x" when its mean over seeds reaches this (primary column)
_EPS = 1e-9  # item scores are multiples of 1/n: a mean that reaches a target exactly must not miss it by rounding


def _base(name: str) -> str:
    return name.split("#seed")[0]


def _agg(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def build_results(profile, evals: dict[str, dict], setup: dict) -> dict[str, Any]:
    """``results.json``: per model (seeds averaged; spreads under ``spread``, every seed's value under
    ``per_seed``, in seed order)."""
    groups: dict[str, list[dict]] = {}
    for name, r in evals.items():
        groups.setdefault(_base(name), []).append(r)
    models: dict[str, Any] = {}
    for name, rs in groups.items():
        rs = sorted(rs, key=lambda r: r.get("seed", 0))
        m: dict[str, Any] = {"train_seq_len": rs[0]["train_seq_len"], "preset": rs[0]["preset"], "parameters": rs[0]["parameters"],
                             "seeds": len(rs), "spread": {}, "per_seed": {"seed": [r.get("seed", 0) for r in rs]}}
        m["val_loss"], m["spread"]["val_loss"] = _agg([r["val_loss"] for r in rs])
        m["per_seed"]["val_loss"] = [r["val_loss"] for r in rs]
        m["niah"], m["spread"]["niah"], m["per_seed"]["niah"] = {}, {}, {}
        for col in rs[0]["niah"]:
            m["niah"][col], m["spread"]["niah"][col], m["per_seed"]["niah"][col] = {}, {}, {}
            for L in rs[0]["niah"][col]:
                vals = [r["niah"][col].get(L) for r in rs]
                m["niah"][col][L], m["spread"]["niah"][col][L] = _agg(vals)
                m["per_seed"]["niah"][col][L] = vals
        for key in ("ruler", "ruler_tasks", "ppl"):
            m[key], m["spread"][key], m["per_seed"][key] = {}, {}, {}
            for L in rs[0].get(key, {}):
                vals = [r.get(key, {}).get(L) for r in rs]
                m[key][L], m["spread"][key][L] = _agg(vals)
                m["per_seed"][key][L] = vals
        if rs[0].get("nope_scale"):  # a row scored with an inference-time NoPE scale (reproduce.conversions)
            m["nope_scale"] = rs[0]["nope_scale"]["mode"]
            m["nope_scale_c"] = [r["nope_scale"].get("c") for r in rs]
        m["kv_speed"] = rs[0]["kv_speed"]
        m["ruler_run"] = rs[0].get("ruler_run", {})
        if rs[0].get("ruler_skipped"):
            m["ruler_skipped"] = rs[0]["ruler_skipped"]
        m["segments"], m["entropy"] = {}, {}
        m["spread"]["segments"], m["spread"]["entropy"] = {}, {}
        for i, a in enumerate(rs[0]["analysis"]):
            L = str(a["length"])
            seg = {g: {k: _agg([r["analysis"][i]["segments"][g][k] for r in rs]) for k in SEG} for g in a["segments"]}
            m["segments"][L] = {g: {k: v[0] for k, v in d.items()} for g, d in seg.items()}
            m["spread"]["segments"][L] = {g: {k: v[1] for k, v in d.items()} for g, d in seg.items()}
            m["entropy"][L], m["spread"]["entropy"][L] = _agg([r["analysis"][i]["entropy"]["all"] for r in rs])
        p1 = m["niah"].get(profile.primary, {}).get(str(profile.seq_len))
        m["gate"] = {"column": profile.primary, "threshold": GATE, "value": p1,
                     "passed": p1 is not None and not math.isnan(p1) and p1 >= GATE - _EPS}
        models[name] = m
    return {"profile": profile.name, "profile_hash": profile.hash(), "setup": setup, "models": models}


def _f(x, d=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{d}f}"


def _pm(x, s, d=3) -> str:
    if s is None or (isinstance(s, float) and (math.isnan(s) or s == 0.0)):
        return _f(x, d)
    return f"{_f(x, d)} ± {_f(s, d)}"


def _spread(m: dict, key: str, length: str):
    """A model's seed spread for ``key`` at ``length`` ({} / None where results predate spreads)."""
    return m.get("spread", {}).get(key, {}).get(length, {} if key == "segments" else None)


_COLUMN_TEXT = {
    "heldout/essay": "held-out wordings of the retrieval family over prose no training run sees (the primary column)",
    "passkey/noise": "the canonical passkey ('The pass key is 12345. Remember it. ...') over the grass/sky filler (stricter: "
                     "one fixed wording the models never saw)",
    "heldout/noise": "held-out wordings over the grass/sky filler",
}


def _niah_row(m: dict, col: str, lengths: list[str], d: int = 2) -> list[str]:
    return [_pm(m["niah"].get(col, {}).get(x), m["spread"]["niah"].get(col, {}).get(x), d) for x in lengths]


def _seeds(vals) -> str:
    return " / ".join("–" if v is None else f"{v:.2f}" for v in vals)


def render(results: dict, profile) -> str:
    ms = results["models"]
    setup = results["setup"]
    L = profile.seq_len
    n_seeds = setup.get("seeds", 1)
    items = profile.niah_samples * len(profile.niah_depths)
    lines = [f"# rnope reproduce — profile `{profile.name}`", "",
             "A laptop-scale replication of *Rope to Nope and Back Again* (arXiv 2501.18795). Paper numbers are",
             "from 8B models trained on 750B+ tokens; ours are tiny models trained for minutes, so compare the",
             "*shape* of each finding (orderings, which layer type does what), not the values.", "",
             "## Setup", ""]
    any_m = next(iter(ms.values()))
    lines += [
        f"- Models: {', '.join(f'`{n}`' for n in ms)} — {any_m['parameters']:,} parameters each "
        f"({profile.n_layer} layers, d_model {profile.d_model}, {profile.n_head} heads / {profile.n_kv_head} KV heads, "
        f"window {profile.window}, BPE vocabulary {profile.vocab_size}).",
        f"- Recipe (identical for every model, docs/study.md): {profile.near_steps} steps of short retrieval-family "
        f"documents at {profile.near_seq_len} tokens (`near`, peak lr {profile.lr:g}); {profile.mix_steps} steps at the "
        f"training length {L} mixing the built-in prose ({1 - profile.mix_synthetic_ratio:.0%} of the sequences) with the "
        f"whole retrieval family (`mix`, lr {profile.mix_lr:g}); the paper's long-context stage, {profile.long_steps} steps "
        f"at {profile.long_factor * L} tokens mixed 1:3 with {L}-token sequences (`long`, lr {profile.long_lr:g}), the RoPE "
        f"baselines raising theta 10k → 2M there. Batch {profile.batch_size}.",
        f"- Tokens per model: {setup['tokens_per_model']:,}." if isinstance(setup.get("tokens_per_model"), int) else "- Tokens per model: –.",
        f"- Seeds: {n_seeds}; {setup['minutes']:.1f} min of wall time over its invocations ({setup['train_seconds'] / 60:.1f} "
        f"training-minutes over all models); hardware: {setup['machine']}.",
        f"- Data: built-in corpus (stdlib prose) sha256 `{setup.get('corpus_hash', '–')}`. Evaluation items draw "
        "wordings, key words, values and haystack sentences that no training document contains "
        "(`tests/tasks/test_family.py` checks it); every seed is scored on the same items, so a ± is the spread over training "
        "seeds alone.", "",
        "## Retrieval against length (NIAH)", "",
        f"Each cell: {items} items per length ({len(profile.niah_depths)} depths × {profile.niah_samples}), greedy "
        "continuation of the answer prefix, scored 1 when it holds the needle's exact value"
        + (f"; mean ± sample standard deviation over the {n_seeds} seeds" if n_seeds > 1 else "") + ". "
        f"A model *retrieves at 1×* when its mean in the primary column reaches {GATE}; only then is its score past the "
        "training length read as a length effect. Columns:", ""]
    for col in profile.niah_columns:
        lines.append(f"- `{col}`: {_COLUMN_TEXT.get(col, col)}.")
    facs = profile.niah_factors
    lengths = [str(f * L) for f in facs]
    for col in profile.niah_columns:
        lines += ["", f"### `{col}`", "",
                  markdown_table(["model", *(f"{f}× ({f * L})" for f in facs)], [[n, *_niah_row(m, col, lengths)] for n, m in ms.items()])]
    if n_seeds > 1:
        lines += ["", f"Per seed, `{profile.primary}` (seeds " + ", ".join(map(str, any_m["per_seed"]["seed"])) + "):", "",
                  markdown_table(["model", *(f"{f}×" for f in facs)],
                                 [[n, *(_seeds(m["per_seed"]["niah"].get(profile.primary, {}).get(x, [])) for x in lengths)]
                                  for n, m in ms.items()])]
    multi = n_seeds > 1
    # the heat maps' files are named by the run's safe name (rnope-swa#seed0 -> niah_rnope-swa_seed0.png)
    lines += [""] + [f"![NIAH {n}{' (seed 0)' if multi else ''}](figures/niah_{safe_name(n + ('#seed0' if multi else ''))}.png)"
                     for n in ("rope", "nope", "rnope-swa", "swa") if n in ms] + [""]
    # ---- Table 2 analogue
    rows = []
    for n, m in ms.items():
        c = m["niah"].get(profile.primary, {})
        sd = m["spread"]["niah"].get(profile.primary, {})
        rows.append([n, _pm(m["val_loss"], m["spread"]["val_loss"]), _f(PAPER_VAL.get(n), 2), _pm(c.get(str(L)), sd.get(str(L)), 2),
                     _pm(c.get(lengths[-1]), sd.get(lengths[-1]), 2), _f(PAPER_NEEDLES_65K.get(n), 2)])
    lines += ["## Table 2 analogue: short-context loss and retrieval", "",
              markdown_table(["model", f"val loss @ {L}", "paper val loss", "NIAH 1×", f"NIAH {facs[-1]}×", "paper needles 65k"], rows)]
    lines += ["", f"Validation loss: next-token loss on the held-out split of the built-in prose at {L} tokens. NIAH: "
              f"`{profile.primary}`.", ""]
    # ---- segments
    rows = []
    for n, m in ms.items():
        for Ls, seg in m["segments"].items():
            a, sa = seg.get("all", {}), _spread(m, "segments", Ls).get("all", {})
            paper = PAPER_SEGMENTS.get(n)
            ptxt = " / ".join("·".join(f"{v:g}" for v in paper[k]) for k in ("8k", "32k")) if paper else "–"
            rows.append([n, Ls, *(_pm(a.get(k), sa.get(k), 4) for k in SEG), ptxt])
    lines += ["## Attention mass by segment (End queries; all layers and heads)", "",
              markdown_table(["model", "length", *SEG, "paper (8k / 32k) begin·needle·context·end"], rows)]
    rows = []
    for n, m in ms.items():
        p = PAPER_ENTROPY.get(n)
        rows.append([n, *(_pm(m["entropy"].get(str(f * L)), _spread(m, "entropy", str(f * L)), 2) for f in profile.analysis_factors),
                     " / ".join(map(str, p)) if p else "–"])
    lines += ["", "![segment mass](figures/segments.png)", "", "## Attention entropy (nats, End queries, mean over layers and heads)", "",
              markdown_table(["model", *(str(f * L) for f in profile.analysis_factors), "paper 8k / 32k / 128k"], rows)]
    # ---- division of labour
    Lx = str(max(profile.analysis_factors) * L)
    rows = []
    for n, m in ms.items():
        seg, sd = m["segments"].get(Lx, {}), _spread(m, "segments", Lx)
        cells = [_pm(seg.get(g, {}).get(k), sd.get(g, {}).get(k), 4) for g in ("nope_layers", "rope_layers") for k in ("needle", "end")]
        p = PAPER_LABOUR.get(n)
        ptxt = " · ".join("–" if v is None else _f(v, 4 if i < 4 else 2) for i, v in enumerate(p)) if p else "–"
        nv = m["niah"].get(profile.primary, {}).get(Lx)
        rows.append([n, *cells, _pm(nv, m["spread"]["niah"].get(profile.primary, {}).get(Lx), 2), ptxt])
    lines += ["", f"## Division of labour by layer type (at {Lx} tokens), the RNoPE theta ablation", "",
              markdown_table(["model", "NoPE-layer needle", "NoPE-layer end", "RoPE-layer needle", "RoPE-layer end",
                              "NIAH at that length", "paper row"], rows)]
    lines += _ruler_section(ms, profile)
    # ---- ppl, KV
    pl = sorted({int(k) for m in ms.values() for k in m["ppl"]})
    lines += ["", "## Perplexity vs evaluation length (same final tokens scored at every length)", "",
              markdown_table(["model", *pl], [[n, *(_pm(m["ppl"].get(str(x)), m["spread"]["ppl"].get(str(x)), 2) for x in pl)]
                                              for n, m in ms.items()])]
    note = ("Decode tok/s is one 32-token run per model, measured while other work may share the CPU: "
            "use `rnope bench` for speed claims; the KV bytes are exact.")
    rows = []
    for n, m in ms.items():
        k = m["kv_speed"]
        theory = 0.25 + 0.75 * profile.window / (k["length"] + 32) if m["preset"].startswith("rnope-swa") else None
        rows.append([n, k["length"], f"{k['kv_bytes']:,}", f"{k['kv_ratio']:.3f}", _f(theory, 3), f"{k['decode_tok_s']:.0f}"])
    lines += ["", "![perplexity vs length](figures/ppl.png)", "", "## KV cache and decode speed at the longest NIAH length", "",
              markdown_table(["model", "length", "KV bytes", "of full attention", "theory 0.25+0.75·W/L (RNoPE-SWA)", "decode tok/s"], rows)]
    lines += ["", note, "", "## What reproduced and what did not", "",
              f"Every verdict reads `{profile.primary}`"
              + (f" and holds only if it holds in each of the {n_seeds} seeds" if n_seeds > 1 else "")
              + "; ✅ holds, ❌ does not, ⚠️ withheld or not informative.", ""] + verdicts(ms, profile)
    from .conversions import section

    lines += section(results, profile)
    return "\n".join(lines)


_NIAH_AND_VT = ("niah_", "vt")


def _ruler_section(ms: dict, profile) -> list[str]:
    rl = sorted({int(k) for m in ms.values() for k in m["ruler"]})
    if not rl:
        return ["", "## RULER", "", "Not evaluated: no task fits the evaluated lengths."]
    L = profile.seq_len
    run = next(iter(ms.values())).get("ruler_run", {})
    out = ["", "## RULER (synthetic tasks in RULER's own wordings; synthetic mean × 100 over the tasks run)", "",
           f"{profile.ruler_samples} items per task and length, essay haystack from rnope's held-out prose, "
           "`string_match_all`, prompts as NVIDIA RULER builds them (docs/ruler.md). The models were taught these answer "
           "formats with other wordings only. At each length the synthetic mean covers the tasks whose template fits "
           "it; it is not RULER's published average, which covers 13 tasks, QA included:",
           ""]
    for x in rl:
        out.append(f"- {x} tokens ({x // L}×): {', '.join(run.get(str(x), profile.ruler_tasks))}.")
    out += ["", markdown_table(["model", *(f"{x} ({x // L}×, {len(run.get(str(x), profile.ruler_tasks))} tasks)" for x in rl)],
                               [[n, *(_pm(m["ruler"].get(str(x)), m["spread"]["ruler"].get(str(x)), 1) for x in rl)]
                                for n, m in ms.items()])]
    shown = list(dict.fromkeys([rl[0], *[x for x in rl if x > profile.long_factor * L][:1]]))
    for x in shown:
        tasks = run.get(str(x), list(profile.ruler_tasks))
        out += ["", f"Per task at {x} tokens ({x // L}×):", "",
                markdown_table(["model", *tasks], [[n, *(_pm(m["ruler_tasks"].get(f"{t}@{x}"), m["spread"]["ruler_tasks"].get(f"{t}@{x}"), 1)
                                                         for t in tasks)] for n, m in ms.items()])]
    return out


def _ruler_niah_vt(m: dict, length: str, seed: int | None = None) -> float | None:
    """Mean score (0-1) over the NIAH tasks and vt run at ``length`` (seed mean, or one seed's)."""
    tasks = [t for t in m.get("ruler_run", {}).get(length, []) if t.startswith(_NIAH_AND_VT)]
    vals = []
    for t in tasks:
        key = f"{t}@{length}"
        v = m["ruler_tasks"].get(key) if seed is None else (m["per_seed"]["ruler_tasks"].get(key) or [None] * (seed + 1))[seed]
        if v is None:
            return None
        vals.append(v / 100)
    return sum(vals) / len(vals) if vals else None


def verdicts(ms: dict, profile) -> list[str]:
    """Automatic, numeric checks of the study's claims, stated whichever way they come out: a claim
    is ✅ only if it holds in every seed; a claim about failing beyond the training length is made
    only for a model that retrieves at 1×."""
    L, col = profile.seq_len, profile.primary
    out: list[str] = []

    def per_seed(n: str, f: int) -> list[float]:
        return [v for v in ms.get(n, {}).get("per_seed", {}).get("niah", {}).get(col, {}).get(str(f * L), []) if v is not None]

    def mean(n: str, f: int) -> float | None:
        v = ms.get(n, {}).get("niah", {}).get(col, {}).get(str(f * L))
        return None if v is None or math.isnan(v) else v

    def show(n: str, f: int) -> str:
        vals = per_seed(n, f)
        return f"{mean(n, f):.2f}" + (f" (seeds {_seeds(vals)})" if len(vals) > 1 else "")

    passed = {n for n, m in ms.items() if m.get("gate", {}).get("passed")}
    # 1. the gate
    for n in ms:
        if mean(n, 1) is None:
            continue
        if n in passed:
            out.append(f"- ✅ {n} retrieves at 1× ({L} tokens): {show(n, 1)} (gate: mean ≥ {GATE}).")
        elif n.startswith("swa"):
            out.append(f"- ℹ️ {n} at 1×: {show(n, 1)}; with a window of {profile.window} it sees a needle only when it sits "
                       "within the window of the question.")
        else:
            out.append(f"- ❌ {n} does not retrieve at 1× ({L} tokens): {show(n, 1)} (gate: mean ≥ {GATE}); its scores past "
                       "the training length say nothing about length, and no length verdict is drawn for it.")
    # 2. beyond the training length
    beyond = [f for f in profile.niah_factors if f > profile.long_factor] or [max(profile.niah_factors)]
    for f in beyond:
        v = mean("rnope-swa", f)
        if v is None:
            continue
        if "rnope-swa" not in passed:
            out.append(f"- ⚠️ rnope-swa at {f}×: {show('rnope-swa', f)}, withheld: it does not retrieve at 1×.")
            continue
        ok = v >= 0.9 - _EPS and all(x >= 0.8 - _EPS for x in per_seed("rnope-swa", f))
        out.append(f"- {'✅' if ok else '❌'} rnope-swa keeps retrieving at {f}× the training length, past the long "
                   f"stage's {profile.long_factor}×: {show('rnope-swa', f)} (target: mean ≥ 0.9, every seed ≥ 0.8).")
    # read where the paper did: 4x past the longest trained position (its 256k against a 64k stage), or as far as measured
    f = min([x for x in beyond if x >= 4 * profile.long_factor] or [max(beyond)])
    for n in ms:
        if n == "rnope-swa" or n.startswith("swa") or mean(n, f) is None:
            continue
        if n not in passed:
            out.append(f"- ⚠️ \"{n} fails beyond its training length\" is withheld: {n} does not retrieve at 1×.")
            continue
        fails = all(x < 0.2 for x in per_seed(n, f))
        out.append(f"- {'✅' if fails else '❌'} {n} fails beyond its training length: {show(n, f)} at {f}×, past the "
                   f"long stage's {profile.long_factor}× (target: < 0.2 in every seed).")
    # 3. the short-context cost of the hybrid
    a, b = ms.get("rnope-swa", {}), ms.get("rope", {})
    if a.get("val_loss") is not None and b.get("val_loss") is not None:
        rel = (a["val_loss"] - b["val_loss"]) / b["val_loss"]
        pairs = list(zip(a["per_seed"].get("val_loss", []), b["per_seed"].get("val_loss", [])))
        ok = all((x - y) / y <= 0.02 for x, y in pairs) if pairs else rel <= 0.02
        out.append(f"- {'✅' if ok else '❌'} rnope-swa val loss {a['val_loss']:.3f} vs rope {b['val_loss']:.3f} "
                   f"({100 * rel:+.1f}%; target: within 2% in every seed).")
    # 4. RULER
    rl = sorted(int(k) for k in next(iter(ms.values())).get("ruler", {}))
    if rl:
        first = str(rl[0])
        for n in ("rope", "rnope-swa"):
            if n not in ms:
                continue
            v = _ruler_niah_vt(ms[n], first)
            if v is None:
                continue
            seeds = [_ruler_niah_vt(ms[n], first, seed=i) for i in range(ms[n]["seeds"])]
            tasks = [t for t in ms[n]["ruler_run"].get(first, []) if t.startswith(_NIAH_AND_VT)]
            ok = v >= 0.5 - _EPS and all(x is not None and x >= 0.5 - _EPS for x in seeds)
            out.append(f"- {'✅' if ok else '❌'} RULER at {first} tokens ({int(first) // L}×), mean of the NIAH tasks and vt "
                       f"({len(tasks)}: {', '.join(tasks)}): {n} {v:.2f}"
                       + (f" (seeds {_seeds(seeds)})" if len(seeds) > 1 else "") + " (target ≥ 0.5).")
        if "rope" in ms and "rnope-swa" in ms:
            past = [x for x in rl if x > profile.long_factor * L] or rl[1:]
            for x in past:
                a_ = ms["rnope-swa"]["per_seed"]["ruler"].get(str(x), [])
                b_ = ms["rope"]["per_seed"]["ruler"].get(str(x), [])
                ok = bool(a_) and all(p is not None and q is not None and p > q for p, q in zip(a_, b_))
                out.append(f"- {'✅' if ok else '❌'} RULER at {x} tokens ({x // L}×, past the long stage): rnope-swa "
                           f"{ms['rnope-swa']['ruler'][str(x)]:.1f} vs rope {ms['rope']['ruler'][str(x)]:.1f} "
                           "(target: rnope-swa above rope in every seed).")
    # 5. inside the models (the paper's attention analysis)
    Lx = str(max(profile.analysis_factors) * L)
    needle = {n: m["segments"].get(Lx, {}).get("all", {}).get("needle") for n, m in ms.items()}
    ent = {n: m["entropy"].get(Lx) for n, m in ms.items()}
    if all(needle.get(n) is not None for n in ("nope", "rope", "qknorm")):
        order = needle["nope"] > max(needle["rope"], needle["qknorm"])
        out.append(f"- {'✅' if order else '❌'} NoPE puts the most mass on the needle at {Lx}: nope {needle['nope']:.4f}, "
                   f"rope {needle['rope']:.4f}, qknorm {needle['qknorm']:.4f} (seed means).")
        low = needle["qknorm"] <= min(needle["rope"], needle["nope"])
        out.append(f"- {'✅' if low else '❌'} QK-Norm has the least needle mass at {Lx}: qknorm {needle['qknorm']:.4f}, "
                   f"rope {needle['rope']:.4f}, nope {needle['nope']:.4f} (seed means).")
        if ent.get("qknorm") is not None and ent.get("rope") is not None:
            vs_rope = ent["qknorm"] > ent["rope"]
            vs_nope = ent.get("nope") is None or ent["qknorm"] >= ent["nope"]
            out.append(f"- {'✅' if vs_rope else '❌'} QK-Norm has higher attention entropy than RoPE at {Lx} (the paper's "
                       f"comparison: 10.71 vs 6.02 at 8k): qknorm {ent['qknorm']:.2f}, rope {ent['rope']:.2f}"
                       + ("" if ent.get("nope") is None else
                          f"; {'and' if vs_nope else 'but not'} higher than NoPE ({ent['nope']:.2f}, not measured in the paper)")
                       + ".")
    seg = ms.get("rnope", {}).get("segments", {}).get(Lx, {})
    if "nope_layers" in seg and "rope_layers" in seg:
        n_, r_ = seg["nope_layers"], seg["rope_layers"]
        ok = n_["needle"] > r_["needle"] and r_["end"] > n_["end"]
        out.append(f"- {'✅' if ok else '❌'} In RNoPE, NoPE layers carry the needle mass ({n_['needle']:.4f} vs RoPE {r_['needle']:.4f}) "
                   f"and RoPE layers the End/recency mass ({r_['end']:.4f} vs NoPE {n_['end']:.4f}).")
    out.append("- Scale caveat: these are tiny models trained for minutes on a CPU; a miss here is a finding about this scale "
               "and recipe, reported as measured (evaluation wordings, key words, values and haystacks never occur in training).")
    return out


def ppl_figure(results: dict, profile):
    """Perplexity vs context length, one line per model (seed means), the training length marked."""
    from ..evals.report import figure, length_x_axis, plain_y_axis

    fig = figure(7.4, 4.4, dpi=110)
    ax = fig.add_subplot()
    xs_all: list[int] = []
    ys_all: list[float] = []
    for k, (n, m) in enumerate(results["models"].items()):
        pts = [(int(x), m["ppl"][x]) for x in m["ppl"]]
        pts = sorted((x, y) for x, y in pts if y is not None and math.isfinite(y))
        xs_all += [x for x, _ in pts]
        ys_all += [y for _, y in pts]
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", markersize=5, lw=1.8, color=f"C{k % 10}", label=n)
    ax.axvline(profile.seq_len, color="0.35", ls="--", lw=1.2, label=f"training length ({profile.seq_len})")
    length_x_axis(ax, xs_all)
    plain_y_axis(ax, ys_all, log=True)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity of the final tokens (exp of mean NLL)")
    ax.set_title("Perplexity vs context length (mean over seeds)", fontsize=11)
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=9, frameon=False)
    return fig


def segments_figure(results: dict):
    """Stacked segment-mass bars (all layers) for every model and analysis length."""
    from ..analysis.plots import COLORS
    from ..evals.report import figure

    rows = [(f"{n} {L}", seg["all"]) for n, m in results["models"].items() for L, seg in m["segments"].items() if "all" in seg]
    fig = figure(max(6.0, 0.45 * len(rows) + 2.4), 4.6, dpi=110)
    ax = fig.add_subplot()
    bottom = [0.0] * len(rows)
    for k in SEG:
        vals = [r[1][k] or 0.0 for r in rows]
        ax.bar(range(len(rows)), vals, bottom=bottom, color=COLORS[k], label=k, width=0.75)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set(ylabel="attention mass of End queries (fraction)", ylim=(0, 1), xlim=(-0.6, len(rows) - 0.4))
    ax.set_title("Attention mass by segment (all layers, mean over seeds)", fontsize=11)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], loc="outside right upper", fontsize=9, frameon=False)  # top segment first
    return fig


def figures(results: dict, profile, out_dir) -> list[str]:
    """ppl.png (one line per model, training length marked) and segments.png (stacked bars)."""
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ppl_figure(results, profile).savefig(out_dir / "ppl.png", dpi=110)
    segments_figure(results).savefig(out_dir / "segments.png", dpi=110)
    return ["ppl.png", "segments.png"]
