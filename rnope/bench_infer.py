"""The inference parts of ``rnope bench`` (:mod:`rnope.bench` runs them and holds their targets): prefill and
decode against transformers' ``generate()``, end to end, the KV cache's bytes against the paper's fraction, and
the sliding kernel's scaling."""

from __future__ import annotations

import gc
import time
from typing import Callable

import torch

from .bench_harness import PRESETS, config, hf_twin, interleaved, log, med, rnope_model


# ---------------------------------------------------------------------------------------------- inference
class _Stamps:
    """transformers streamer / rnope callback: the time each new token arrives."""

    def __init__(self):
        self.t: list[float] = []

    def put(self, value):  # transformers calls put(prompt) first, then put(new tokens) per step
        self.t.append(time.perf_counter())

    def end(self):
        pass

    def __call__(self, step, tokens):
        self.t.append(time.perf_counter())


def _decode_rate(stamps: list[float], n_new: int) -> float:
    """Tokens/s from the first new token to the last (prefill excluded)."""
    return (n_new - 1) / (stamps[-1] - stamps[-n_new])


def bench_inference(preset: str, lengths: list[int], new_tokens: int, rounds: int, *, hf: bool, compile: bool) -> dict:
    from rnope import decode as decode_mod
    from rnope.inference import generate, prefill

    L_max = max(lengths) + new_tokens + 1
    model = rnope_model(preset, L_max).eval()
    twin = hf_twin(model) if hf else None
    if twin is not None:
        twin.eval()
        from transformers import GenerationConfig

        gcfg = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                                eos_token_id=None, bos_token_id=None)
    out: dict = {}
    for L in lengths:
        prompt = torch.randint(3, model.config.vocab_size, (1, L), generator=torch.Generator().manual_seed(L))
        ids = prompt.tolist()
        res: dict = {"prompt_tokens": L, "new_tokens": new_tokens}
        fns: dict[str, Callable] = {}
        gen: dict[str, list] = {}
        e2e: dict[str, list[float]] = {"rnope_default": [], "rnope_f16w": [], "hf": []}  # whole generate() calls, seconds

        def rn_prefill():
            cache = model.new_cache(1, L + 1)
            with torch.inference_mode():
                t = time.perf_counter()
                prefill(model, ids, cache)
                return time.perf_counter() - t

        def rn_generate(comp: bool | None, key: str, weights: str | None = None):
            def run():
                s = _Stamps()
                t = time.perf_counter()
                gen[key] = generate(model, ids, new_tokens, callback=s, compile=comp, decode_weights=weights)[0]
                if comp is None:
                    e2e["rnope_default"].append(time.perf_counter() - t)
                elif weights is not None:
                    e2e["rnope_f16w"].append(time.perf_counter() - t)
                return 1.0 / _decode_rate(s.t, new_tokens)  # seconds per token
            return run

        # what a user meets first: rnope.generate with default arguments in a process that has not
        # decoded with this shape yet (the automatic choice: eager, nothing to compile for 128 tokens)
        decode_mod._decoded.clear()
        decode_mod._warm.clear()
        t = time.perf_counter()
        first = generate(model, ids, new_tokens)[0]
        res["e2e_first_call_s"] = time.perf_counter() - t
        res["e2e_first_call_compiled"] = bool(decode_mod._warm)

        fns["rnope_prefill"] = rn_prefill
        fns["floor"] = weight_stream_fn(model)
        if twin is not None:
            def hf_prefill():
                with torch.inference_mode():
                    t = time.perf_counter()
                    twin(prompt, use_cache=True, logits_to_keep=1)
                    return time.perf_counter() - t

            def hf_generate():
                s = _Stamps()
                t = time.perf_counter()
                with torch.inference_mode():
                    o = twin.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=gcfg, streamer=s)
                e2e["hf"].append(time.perf_counter() - t)
                gen["hf"] = o[0, L:].tolist()
                return 1.0 / _decode_rate(s.t, new_tokens)

            fns["hf_prefill"] = hf_prefill
        fns["rnope_decode_eager"] = rn_generate(False, "rnope_eager")
        if compile:
            fns["rnope_decode_compiled"] = rn_generate(True, "rnope_compiled")
            # rnope.generate with default arguments once the process has decoded enough with this shape
            # to compile (AUTO_COMPILE_TOKENS; here the warm-up call below compiles it)
            fns["rnope_decode_default"] = rn_generate(None, "rnope_default")
            # opt-in: the compiled step reading float16 weights (decode_weights="float16"); not the default
            fns["rnope_decode_compiled_f16w"] = rn_generate(True, "rnope_f16w", "float16")
        if twin is not None:
            fns["hf_decode"] = hf_generate
        try:
            if compile:  # compile the step for this cache length before timing
                t = time.perf_counter()
                fns["rnope_decode_compiled"]()
                res["compile_s"] = time.perf_counter() - t
                fns["rnope_decode_compiled_f16w"]()
                e2e["rnope_f16w"].clear()
            times = interleaved(fns, rounds)
        except (RuntimeError, MemoryError) as e:
            log(f"inference {preset} L={L}: failed ({e.__class__.__name__}: {str(e).splitlines()[0]})")
            res["error"] = f"{e.__class__.__name__}: {str(e).splitlines()[0]}"
            out[str(L)] = res
            continue
        res["decode_floor_tok_per_s"] = 1.0 / med(times.pop("floor"))
        if e2e["rnope_default"]:
            res["e2e_s"] = {"rnope_default": med(e2e["rnope_default"])}
            res["e2e_default_compiled"] = bool(decode_mod._warm)
            if e2e["hf"]:
                res["e2e_s"]["hf"] = med(e2e["hf"])
                res["e2e_speedup_vs_hf"] = res["e2e_s"]["hf"] / res["e2e_s"]["rnope_default"]
                res["e2e_first_call_vs_hf"] = res["e2e_s"]["hf"] / res["e2e_first_call_s"]
                if e2e["rnope_f16w"]:
                    res["e2e_s"]["rnope_f16w"] = med(e2e["rnope_f16w"])
                    res["e2e_f16w_speedup_vs_hf"] = res["e2e_s"]["hf"] / res["e2e_s"]["rnope_f16w"]
        res["prefill_s"] = {k.split("_")[0]: med(v) for k, v in times.items() if k.endswith("prefill")}
        res["decode_tok_per_s"] = {k.replace("_decode", ""): 1.0 / med(v) for k, v in times.items() if "decode" in k}
        res["raw_s"] = times
        if "hf" in res["prefill_s"]:
            res["prefill_speedup_vs_hf"] = res["prefill_s"]["hf"] / res["prefill_s"]["rnope"]
        dec = res["decode_tok_per_s"]
        if "hf" in dec:  # the fp32 paths (the float16-weight step is an opt-in with other numerics)
            best = max(v for k, v in dec.items() if k.startswith("rnope") and not k.endswith("f16w"))
            res["decode_speedup_vs_hf"] = best / dec["hf"]
            res["decode_speedup_eager_vs_hf"] = dec["rnope_eager"] / dec["hf"]
            res["hf_max_possible_speedup"] = res["decode_floor_tok_per_s"] / dec["hf"]  # if rnope did only the weight reads
        if "hf" in gen:  # same weights, greedy: the same tokens (fp32 ties aside)
            res["same_tokens_as_hf"] = gen["hf"] == gen.get("rnope_eager")
        if "rnope_compiled" in gen:  # the compiled step (matvec layouts on CPU) decodes the same tokens
            res["same_tokens_compiled_as_eager"] = gen["rnope_compiled"] == gen.get("rnope_eager")
        if "rnope_f16w" in gen:  # float16 decode weights: how many greedy tokens match the fp32 step's
            ref = gen.get("rnope_eager") or []
            res["f16w_same_tokens_as_eager"] = sum(a == b for a, b in zip(gen["rnope_f16w"], ref)) / max(1, len(ref))
        res["same_tokens_default_as_eager"] = first == gen.get("rnope_eager") and gen.get("rnope_default", first) == first
        log(f"inference {preset} L={L}: prefill {res['prefill_s']}, decode tok/s {({k: round(v, 1) for k, v in dec.items()})}")
        out[str(L)] = res
        gc.collect()
    return out


def weight_stream_fn(model) -> Callable[[], float]:
    """The unavoidable work of one B=1 decode step: reading every weight matrix once, in model order
    (a plain ``sum`` per matrix, which streams at memory bandwidth; one row times each matrix through
    BLAS reads them ~3x slower here and was the floor before the compiled step beat it). Returns
    seconds per step."""
    mats = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)] + [model.embed_tokens.weight]

    def run():
        with torch.inference_mode():
            t = time.perf_counter()
            for w in mats:
                w.sum()
            return time.perf_counter() - t

    return run


# ---------------------------------------------------------------------------------------------- KV cache
def bench_kv(lengths: list[int], hf: bool) -> dict:
    out: dict = {}
    for preset in PRESETS:
        model = rnope_model(preset, max(lengths))
        cfg = model.config
        per_pos = cfg.n_kv_head * cfg.head_dim * 2 * 4  # K and V, fp32
        twin = hf_twin(model).eval() if hf else None
        rows = {}
        for L in lengths:
            cache = model.new_cache(1, L)
            full = cfg.n_layer * L * per_pos
            W = cfg.window
            theory = (0.25 + 0.75 * W / L) if preset == "rnope-swa" and L >= W else 1.0
            row = {"bytes": cache.nbytes, "full_attention_bytes": full, "fraction": cache.nbytes / full, "theory": theory,
                   "rel_error": cache.nbytes / (theory * full) - 1.0}
            if twin is not None and L <= 8192:  # transformers' cache after its prefill
                with torch.inference_mode():
                    pkv = twin(torch.randint(3, cfg.vocab_size, (1, L)), use_cache=True, logits_to_keep=1).past_key_values
                row["hf_bytes"] = _hf_cache_bytes(pkv)
            rows[str(L)] = row
            del cache
        out[preset] = rows
    return out


def _hf_cache_bytes(pkv) -> int | None:
    total = 0
    layers = getattr(pkv, "layers", None)
    if layers is None:
        return None
    for layer in layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.nbytes
    return total


# ---------------------------------------------------------------------------------------------- sliding
def bench_sliding(rounds: int) -> dict:
    from rnope.inference import prefill
    from rnope.kernels import sdpa

    cfg = config("rnope-swa", 16384)
    H, Hkv, D, W = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.window
    g = torch.Generator().manual_seed(0)
    qkv = {T: (torch.randn(1, H, T, D, generator=g), torch.randn(1, Hkv, T, D, generator=g), torch.randn(1, Hkv, T, D, generator=g))
           for T in (8192, 16384)}
    with torch.inference_mode():
        fns = {f"kernel_{T}": (lambda T=T: sdpa.sliding(*qkv[T], W)) for T in qkv}
        for f in fns.values():
            f()
        kt = interleaved(fns, max(rounds, 5))
    out = {"window": W, "kernel_8k_s": med(kt["kernel_8192"]), "kernel_16k_s": med(kt["kernel_16384"])}
    out["kernel_t16k_over_t8k"] = out["kernel_16k_s"] / out["kernel_8k_s"]
    models = {p: rnope_model(p, 16384).eval() for p in PRESETS}
    ids = torch.randint(3, cfg.vocab_size, (1, 16384), generator=g).tolist()

    def pre(p):
        def run():
            cache = models[p].new_cache(1, 16384)
            with torch.inference_mode():
                t = time.perf_counter()
                prefill(models[p], ids, cache)
                return time.perf_counter() - t
        return run

    pt = interleaved({p: pre(p) for p in PRESETS}, rounds)
    out["prefill_16k_s"] = {p: med(v) for p, v in pt.items()}
    out["prefill_16k_s_all"] = pt
    out["prefill_16k_swa_over_rope"] = out["prefill_16k_s"]["rnope-swa"] / out["prefill_16k_s"]["rope"]
    return out
