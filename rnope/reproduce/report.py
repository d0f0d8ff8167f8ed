"""``results.json`` and ``REPORT.md`` of a study: tables shaped like the paper's, next to its numbers."""

from __future__ import annotations

import math
import statistics
from typing import Any

# PAPER.md §3 (8B models; "as reported")
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

# What was tried to make tiny models retrieve (measured while building rnope, 2-core CPU, fp32).
TRIED = [
    "## Retrieval at tiny scale: what was tried", "",
    "- Byte-level tokenizer, d_model 128, 4 layers, T 256, multi-key passkey documents (train templates) mixed with "
    "prose: loss fell to 0.25 but passkey accuracy stayed 0 for 600 steps (rope and rnope-swa alike).",
    "- Token-space copy task (a random span repeated): both rope and rnope-swa solve it in ~200 steps (loss 0.19 → 0.001); "
    "token-space MQAR with 16 pairs stayed at chance (ln 128) for 300 steps for both.",
    "- BPE-1024 tokenizer + a copy warm-up (so the induction circuit exists) + stdlib prose + train-template passkey / NIAH "
    "documents: after 500 steps the model answers the training template with a 5-digit number, but the wrong one "
    "(format learned, retrieval not).",
    "- A copy warm-up then formed the induction circuit (word-copy accuracy 0.95 after 300 steps for rope; rnope-swa, "
    "whose only long-range layer is its one NoPE layer, only 0.63), yet neither model then copied passkey digits "
    "(teacher-forced, every digit predicted as the same frequent digit).",
    "- What worked: a distance curriculum on dense question/answer documents (`recall_near`, then `recall`, many per "
    "sequence). At 0–2 filler sentences rnope-swa copies the 5-digit value after ~250 steps; trained at up to 20 sentences "
    "from scratch it stays at chance for 400 steps, but continued from the short-distance model it climbs (answer-token "
    "accuracy 0.37 → 0.72 in 400 steps). Through `rnope train` (d_model 128, 4 layers, batch 16 × 256): after 400 near + "
    "500 far + 400 mixed steps, rnope-swa retrieves train-template passkeys at 256 tokens 16/16 (at step 1000 it was 1/16: "
    "a late phase change; rope was at 10/16 already at step 900 — the hybrid learns it later, as the issue anticipated).",
    "- With only three train key phrases the models memorised them and answered the eval template ('the pass key') "
    "with a train phrase; recall documents therefore draw their key from ~400 phrases (train nouns × kind words), "
    "none in an eval template.",
    "- At the `quick` budget (3–5 CPU-minutes per model) with batch 16, retrieval emerged or not depending on the seed: "
    "nine rnope-swa runs (d_model 64–96, 400 + 500 curriculum steps at 128 tokens) scored 0.00–1.00 on the training "
    "templates at 1× and 0.00–0.80 on the evaluation template. The same tokens in batches of 8, so twice the updates, "
    "gave 0.90–1.00 on the training templates up to 8× in both seeds tried; `quick` trains that way.",
    "- Those models still missed the unseen evaluation template: they found the needle but got its first token wrong "
    "(' 13054.' for 97054). Teacher-forced probes with hand-made key phrases showed why: the whole value was "
    "right 0.96–1.00 of the time after a key ending in one of the ten training kind words ('zebra ticket', an unseen "
    "first word), and 0.00–0.21 after keys ending in 'key' ('pass key', 'secret key', 'falcon key'). The model had "
    "learned 'copy the number after <kind word> is', not 'after the question's key'. Far recall documents now also "
    "draw both key words from the training prose (any 3–10 letter word, never a word of an evaluation template); "
    "near documents keep the closed set, on which the copy circuit forms fastest (open words there too lost "
    "retrieval in one of two seeds). With that, four rnope-swa seeds of the quick recipe scored 0.80–1.00 on the "
    "evaluation template at 4× (mean 0.94) and 0.70–1.00 at 8× (mean 0.90), where the closed set gave 0.00–0.15 "
    "(docs/retrieval.md).", "",
]


def _base(name: str) -> str:
    return name.split("#seed")[0]


def _agg(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def build_results(profile, evals: dict[str, dict], setup: dict) -> dict[str, Any]:
    """``results.json``: per model (seeds averaged; spreads under ``spread``)."""
    groups: dict[str, list[dict]] = {}
    for name, r in evals.items():
        groups.setdefault(_base(name), []).append(r)
    models: dict[str, Any] = {}
    for name, rs in groups.items():
        m: dict[str, Any] = {"train_seq_len": rs[0]["train_seq_len"], "preset": rs[0]["preset"], "parameters": rs[0]["parameters"],
                             "seeds": len(rs), "spread": {}}
        m["val_loss"], m["spread"]["val_loss"] = _agg([r["val_loss"] for r in rs])
        for key in ("niah", "ruler", "ppl", "niah_train_templates"):
            if key not in rs[0]:  # evaluations cached by an older rnope lack the diagnostic
                continue
            m[key], m["spread"][key] = {}, {}
            for L in rs[0][key]:
                m[key][L], m["spread"][key][L] = _agg([r.get(key, {}).get(L) for r in rs])
        m["kv_speed"] = rs[0]["kv_speed"]
        if rs[0].get("ruler_skipped"):
            m["ruler_skipped"] = rs[0]["ruler_skipped"]
        m["segments"], m["entropy"], m["labour"] = {}, {}, {}
        m["spread"]["segments"], m["spread"]["entropy"] = {}, {}
        for i, a in enumerate(rs[0]["analysis"]):
            L = str(a["length"])
            seg = {g: {k: _agg([r["analysis"][i]["segments"][g][k] for r in rs]) for k in SEG} for g in a["segments"]}
            m["segments"][L] = {g: {k: v[0] for k, v in d.items()} for g, d in seg.items()}
            m["spread"]["segments"][L] = {g: {k: v[1] for k, v in d.items()} for g, d in seg.items()}
            m["entropy"][L], m["spread"]["entropy"][L] = _agg([r["analysis"][i]["entropy"]["all"] for r in rs])
        models[name] = m
    return {"profile": profile.name, "setup": setup, "models": models}


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


def render(results: dict, profile) -> str:
    ms = results["models"]
    setup = results["setup"]
    L = profile.seq_len
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
        f"- Recipe (identical for every model): a retrieval curriculum — {profile.near_steps} steps of dense short recall documents "
        f"(value 0–2 sentences before its question), {profile.far_steps} steps with up to 40 filler sentences, both at "
        f"{profile.curriculum_seq_len} tokens — then pre-training "
        f"{profile.pretrain_steps} steps at {L} tokens (built-in prose mixed with recall + train-template passkey documents, "
        f"synthetic ratio {profile.synthetic_ratio}), long-context stage {profile.long_steps} steps at "
        f"{profile.long_factor * L} tokens mixed 1:3 with {L}-token sequences; batch {profile.batch_size}; RoPE baselines raise theta "
        "10k → 2M for the long stage as the paper did.",
        f"- Tokens per model: {setup.get('tokens_per_model', '–'):,}" if isinstance(setup.get("tokens_per_model"), int) else "- Tokens per model: –",
        f"- Seeds: {setup['seeds']}; {setup['minutes']:.1f} min of wall time over its invocations ({setup['train_seconds'] / 60:.1f} "
        f"training-minutes over all models); hardware: {setup['machine']}.",
        f"- Data: built-in corpus (stdlib prose) sha256 `{setup.get('corpus_hash', '–')}`; evaluation items use the eval templates, seeds and"
        " the held-out split (disjoint from training)" + ("; every training seed is evaluated on the same items, so a ± is"
        " the spread over training seeds alone." if setup.get("seeds", 1) > 1 and setup.get("fixed_eval_items") else "."), "",
    ]
    # ---- Table 2 analogue
    facs = profile.niah_factors
    head = "| model | val loss @ {L} | paper val loss | ".format(L=L) + " | ".join(f"NIAH {f}× ({f * L})" for f in facs) + " | paper needles 65k |"
    lines += ["## Table 2 analogue: short-context loss and retrieval beyond the training length", "", head,
              "|" + "---|" * (4 + len(facs))]
    for n, m in ms.items():
        niah = [_pm(m["niah"].get(str(f * L)), m["spread"]["niah"].get(str(f * L)), 2) for f in facs]
        lines.append(f"| {n} | {_pm(m['val_loss'], m['spread']['val_loss'])} | {_f(PAPER_VAL.get(n), 2)} | " + " | ".join(niah)
                     + f" | {_f(PAPER_NEEDLES_65K.get(n), 2)} |")
    lines += ["", "NIAH = passkey accuracy averaged over depths (EVAL.md template, greedy, exact value)."
              + (f" Every table: mean ± sample standard deviation over the {setup['seeds']} seeds (a bare number: no spread)."
                 if setup.get("seeds", 1) > 1 else ""), ""]
    if any("niah_train_templates" in m for m in ms.values()):
        lines += ["Diagnostic — the same grid built from the *training* templates and filler (not a paper metric): it tells "
                  "a model that cannot retrieve from one that retrieves but does not carry the skill to the unseen "
                  "evaluation template.", "", "| model | " + " | ".join(f"train-template NIAH {f}×" for f in facs) + " |",
                  "|" + "---|" * (1 + len(facs))]
        for n, m in ms.items():
            t = m.get("niah_train_templates", {})
            lines.append(f"| {n} | " + " | ".join(_f(t.get(str(f * L)), 2) for f in facs) + " |")
        lines.append("")
    # one heat map per evaluated model; with several seeds the files are niah_NAME#seedK.png: show seed 0
    # ('#' escaped as %23, else the link would end at a URL fragment)
    multi = setup.get("seeds", 1) > 1
    lines += [f"![NIAH {n}{' (seed 0)' if multi else ''}](figures/niah_{n}{'%23seed0' if multi else ''}.png)"
              for n in ("rope", "rnope-swa", "swa") if n in ms] + [""]
    # ---- segments
    lines += ["## Attention mass by segment (End queries; all layers and heads)", "",
              "| model | length | begin | needle | context | end | paper (8k / 32k) begin·needle·context·end |", "|---|---|---|---|---|---|---|"]
    for n, m in ms.items():
        for Ls, seg in m["segments"].items():
            a, sa = seg.get("all", {}), _spread(m, "segments", Ls).get("all", {})
            paper = PAPER_SEGMENTS.get(n)
            ptxt = " / ".join("·".join(f"{v:g}" for v in paper[k]) for k in ("8k", "32k")) if paper else "–"
            lines.append(f"| {n} | {Ls} | " + " | ".join(_pm(a.get(k), sa.get(k), 4) for k in SEG) + f" | {ptxt} |")
    lines += ["", "![segment mass](figures/segments.png)", "", "## Attention entropy (nats, End queries, mean over layers and heads)", "",
              "| model | " + " | ".join(str(f * L) for f in profile.analysis_factors) + " | paper 8k / 32k / 128k |",
              "|---|" + "---|" * (len(profile.analysis_factors) + 1)]
    for n, m in ms.items():
        p = PAPER_ENTROPY.get(n)
        lines.append(f"| {n} | " + " | ".join(_pm(m["entropy"].get(str(f * L)), _spread(m, "entropy", str(f * L)), 2)
                                              for f in profile.analysis_factors)
                     + f" | {' / '.join(map(str, p)) if p else '–'} |")
    # ---- division of labour
    Lx = str(max(profile.analysis_factors) * L)
    lines += ["", f"## Division of labour by layer type (at {Lx} tokens), the RNoPE theta ablation", "",
              "| model | NoPE-layer needle | NoPE-layer end | RoPE-layer needle | RoPE-layer end | NIAH at that length | paper row |",
              "|---|---|---|---|---|---|---|"]
    for n, m in ms.items():
        seg, sd = m["segments"].get(Lx, {}), _spread(m, "segments", Lx)
        cells = [_pm(seg.get(g, {}).get(k), sd.get(g, {}).get(k), 4) for g in ("nope_layers", "rope_layers") for k in ("needle", "end")]
        p = PAPER_LABOUR.get(n)
        ptxt = " · ".join("–" if v is None else _f(v, 4 if i < 4 else 2) for i, v in enumerate(p)) if p else "–"
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {_pm(m['niah'].get(Lx), m['spread']['niah'].get(Lx), 2)} | {ptxt} |")
    # ---- RULER, ppl, KV
    rl = sorted({int(k) for m in ms.values() for k in m["ruler"]})
    lines += ["", f"## RULER synthetic subset ({', '.join(profile.ruler_tasks)}), mean score × 100", "",
              "| model | " + " | ".join(map(str, rl)) + " |", "|---|" + "---|" * len(rl)]
    for n, m in ms.items():
        lines.append(f"| {n} | " + " | ".join(_pm(m["ruler"].get(str(x)), m["spread"]["ruler"].get(str(x)), 1) for x in rl) + " |")
    skipped = next((m["ruler_skipped"] for m in ms.values() if m.get("ruler_skipped")), {})
    if skipped:
        lines += [""] + [f"Not evaluated at {k} tokens: {v}." for k, v in skipped.items()]
    scores = [v for m in ms.values() for v in m["ruler"].values()]
    if scores and all(v == 0 for v in scores):
        lines += ["", "Every model scored 0 on every task at every length, so this table does not separate the "
                  "variants. The models never saw RULER's question formats in training (plural answers, variable "
                  "chains, word counts, 7-digit values): asked for 'the special magic numbers for X', a model that "
                  "retrieves passkeys answers with prose. At this scale RULER measures template transfer, not "
                  "retrieval; the NIAH grid above is the retrieval measurement."]
    pl = sorted({int(k) for m in ms.values() for k in m["ppl"]})
    lines += ["", "## Perplexity vs evaluation length (same final tokens scored at every length)", "",
              "| model | " + " | ".join(map(str, pl)) + " |", "|---|" + "---|" * len(pl)]
    for n, m in ms.items():
        lines.append(f"| {n} | " + " | ".join(_pm(m["ppl"].get(str(x)), m["spread"]["ppl"].get(str(x)), 2) for x in pl) + " |")
    lines += ["", "![perplexity vs length](figures/ppl.png)", "", "## KV cache and decode speed at the longest NIAH length", "",
              "| model | length | KV bytes | of full attention | theory 0.25+0.75·W/L (RNoPE-SWA) | decode tok/s |", "|---|---|---|---|---|---|"]
    note = ("Decode tok/s is one 32-token run per model, measured while other work may share the CPU: "
            "use `rnope bench` for speed claims; the KV bytes are exact.")
    for n, m in ms.items():
        k = m["kv_speed"]
        theory = 0.25 + 0.75 * profile.window / (k["length"] + 32) if m["preset"].startswith("rnope-swa") else None
        lines.append(f"| {n} | {k['length']} | {k['kv_bytes']:,} | {k['kv_ratio']:.3f} | {_f(theory, 3)} | {k['decode_tok_s']:.0f} |")
    lines += ["", note, "", "## What reproduced and what did not", ""] + verdicts(ms, profile) + [""] + TRIED
    return "\n".join(lines)


def verdicts(ms: dict, profile) -> list[str]:
    """Automatic, numeric checks of the issue's targets — stated whichever way they come out."""
    L = profile.seq_len
    out = []

    def niah(n, f):
        return ms.get(n, {}).get("niah", {}).get(str(f * L))

    far = 4 if profile.name == "quick" or 8 not in profile.niah_factors else 8  # the issue: 8×, quick 4×
    best1 = max((m["niah"].get(str(L), 0.0) for m in ms.values()), default=0.0)
    t1 = {n: m.get("niah_train_templates", {}).get(str(L)) for n, m in ms.items()}
    fluent = sorted(n for n, v in t1.items() if v is not None and v >= 0.9)
    transfer = [n for n in fluent if ms[n]["niah"].get(str(L), 0.0) < 0.5]
    if transfer:
        out.append(f"- ⚠️ {', '.join(transfer)} retrieve(s) with the training templates at 1× (≥ 0.9) but not with the unseen "
                   "evaluation template (< 0.5 at 1×): at this scale their NIAH misses measure template transfer, not length.")
    if best1 < 0.2:
        out.append(f"- ❌ No model learned passkey retrieval even at the training length (best NIAH at 1×: {best1:.2f}); the "
                   "checks below that expect a model to *fail* (RoPE past its length, SWA past its window) are therefore "
                   "not informative here.")
    v = niah("rnope-swa", far)
    if v is not None:
        ok = v >= 0.9
        out.append(f"- {'✅' if ok else '❌'} rnope-swa NIAH at {far}× the training length: {v:.2f} (target ≥ 0.9).")
    for f in (4, 8):
        v = niah("rope", f)
        if v is not None:
            v1 = niah("rope", 1)
            if v1 is not None and v1 < 0.5:  # it misses at its own length too: the check says nothing about length
                tt = ms["rope"].get("niah_train_templates", {})
                parts = [f"{tt[str(g * L)]:.2f} at {g}×" for g in dict.fromkeys((1, f, 8)) if str(g * L) in tt]
                extra = f"; with the training templates {', '.join(parts)}" if parts else ""
                out.append(f"- ⚠️ rope NIAH at {f}×: {v:.2f} (target < 0.2), but vacuous: rope scores {v1:.2f} at 1× with the "
                           f"evaluation template{extra} (the long stage trains at {profile.long_factor}×).")
            else:
                seen = " — the long stage trained it at this length" if f <= profile.long_factor else ""
                out.append(f"- {'✅' if v < 0.2 else '❌'} rope NIAH at {f}×: {v:.2f} (target < 0.2: RoPE fails past its length{seen}).")
                # the cleaner test: the first length past every position the long stage trained
                g = min((h for h in profile.niah_factors if h > max(f, profile.long_factor)), default=None)
                if f <= profile.long_factor and g is not None and niah("rope", g) is not None:
                    w = niah("rope", g)
                    out.append(f"- {'✅' if w < 0.2 else '❌'} rope NIAH at {g}×, past the long stage's {profile.long_factor}×: "
                               f"{w:.2f} (target < 0.2).")
            break
    tt_far = {n: m.get("niah_train_templates", {}).get(str(far * L)) for n, m in ms.items()}
    if tt_far.get("rnope-swa") is not None and fluent:
        others = ", ".join(f"{n} {v:.2f}" for n, v in tt_far.items() if n != "rnope-swa" and v is not None)
        out.append(f"- ℹ️ Diagnostic, training templates (not the paper's metric): at {far}× rnope-swa scores "
                   f"{tt_far['rnope-swa']:.2f}; {others}.")
    a, b = ms.get("rnope-swa", {}).get("val_loss"), ms.get("rope", {}).get("val_loss")
    if a is not None and b is not None:
        rel = (a - b) / b
        out.append(f"- {'✅' if rel <= 0.02 else '❌'} rnope-swa val loss {a:.3f} vs rope {b:.3f} ({100 * rel:+.1f}%; target within 2%).")
    v1 = niah("swa", 1)
    vf = niah("swa", far)
    if v1 is not None and vf is not None:
        out.append(f"- swa (window {profile.window}) NIAH {v1:.2f} at 1× vs {vf:.2f} at {far}× (it cannot see a needle farther than its window).")
    Lx = str(max(profile.analysis_factors) * L)
    needle = {n: m["segments"].get(Lx, {}).get("all", {}).get("needle") for n, m in ms.items()}
    ent = {n: m["entropy"].get(Lx) for n, m in ms.items()}
    if all(needle.get(n) is not None for n in ("nope", "rope", "qknorm")):
        order = needle["nope"] > max(needle["rope"], needle["qknorm"])
        out.append(f"- {'✅' if order else '❌'} NoPE puts the most mass on the needle at {Lx}: nope {needle['nope']:.4f}, "
                   f"rope {needle['rope']:.4f}, qknorm {needle['qknorm']:.4f}.")
        low = needle["qknorm"] <= min(needle["rope"], needle["nope"])
        out.append(f"- {'✅' if low else '❌'} QK-Norm has the least needle mass at {Lx}: qknorm {needle['qknorm']:.4f}, "
                   f"rope {needle['rope']:.4f}, nope {needle['nope']:.4f}.")
        if ent.get("qknorm") is not None and ent.get("rope") is not None:
            # the paper measured entropy for RoPE and QK-Norm only; NoPE is shown, and judged, beside them
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
    out.append("- Scale caveat: these are tiny models trained for minutes on CPU; a miss here is a finding about this scale "
               "and recipe, reported as measured, not tuned away (evaluation seeds and templates are disjoint from training).")
    return out


def figures(results: dict, profile, out_dir) -> list[str]:
    """ppl.png (one line per model, training length marked) and segments.png (stacked bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ms = results["models"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, m in ms.items():
        xs = sorted(int(k) for k in m["ppl"])
        ax.plot(xs, [m["ppl"][str(x)] for x in xs], marker="o", label=n)
    ax.axvline(profile.seq_len, color="grey", ls="--", lw=1, label="training length")
    ax.set(xscale="log", yscale="log", xlabel="context length (tokens)", ylabel="perplexity of the final tokens")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "ppl.png", dpi=110)
    plt.close(fig)
    rows = [(f"{n}@{L}", seg["all"]) for n, m in ms.items() for L, seg in m["segments"].items() if "all" in seg]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 4))
    bottom = [0.0] * len(rows)
    for k, c in zip(SEG, ("#4c72b0", "#c44e52", "#bbbbbb", "#55a868")):
        vals = [r[1][k] for r in rows]
        ax.bar(range(len(rows)), vals, bottom=bottom, color=c, label=k)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="attention mass of End queries", ylim=(0, 1))
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(out_dir / "segments.png", dpi=110)
    plt.close(fig)
    return ["ppl.png", "segments.png"]
