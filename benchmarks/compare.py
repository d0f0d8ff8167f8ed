"""Before → after: this checkout's rnope against the same package at a git ref, in one process.

    python benchmarks/compare.py [--ref HEAD] [--threads 1] [--rounds 5] --out compare.json

The package at ``--ref`` is extracted (``git archive``) and imported as ``rnope_base`` next to
``rnope`` (rnope uses relative imports only), both models get the same weights, and every workload
runs interleaved (base, new, base, new, ...) so the machine's load hits both alike. Workloads, on
the ≈7M shape of ``rnope.bench`` (rnope-swa unless noted):

* train step eager and compiled, B×T = 8×512 (forward, fp32 cross-entropy, backward, clip, AdamW);
* prefill at 2k and 16k tokens (``prefill`` of the package's inference module), and rope at 16k
  for the swa/rope ratio;
* decode, ms per token after a 2k prompt: base = ``model(token, cache)``, new =
  :class:`rnope.decode.Decoder` eager and compiled.

Prints a Markdown table (median seconds, after/before) and writes the JSON.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from rnope import bench  # noqa: E402


def load_base(ref: str, where: Path):
    """Import rnope at git ``ref`` as the package ``rnope_base``."""
    data = subprocess.run(["git", "archive", ref, "rnope"], cwd=HERE.parent, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(where, filter="data") if sys.version_info >= (3, 12) else tar.extractall(where)
    (where / "rnope").rename(where / "rnope_base")
    sys.path.insert(0, str(where))
    return importlib.import_module("rnope_base")


def models(pkg_new, pkg_base, preset: str, max_len: int):
    cfg_new = pkg_new.ModelConfig.from_preset(preset, **{**bench.SHAPE, "max_seq_len": max_len})
    cfg_base = pkg_base.ModelConfig.from_preset(preset, **{**bench.SHAPE, "max_seq_len": max_len})
    torch.manual_seed(0)
    new = pkg_new.Transformer(cfg_new)
    base = pkg_base.Transformer(cfg_base)
    base.load_state_dict(new.state_dict())
    return base, new


def train_fn(model, compile: bool, B: int = 8, T: int = 512):
    fwd = torch.compile(model, dynamic=False) if compile else model
    opt = bench.make_optimizer(model, None)
    x = torch.randint(3, model.config.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(0))

    def step():
        logits = fwd(x[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up / compile
    return step


def prefill_fn(gen_mod, model, L: int):
    ids = torch.randint(3, model.config.vocab_size, (1, L), generator=torch.Generator().manual_seed(L)).tolist()

    def run():
        cache = model.new_cache(1, L + 1)
        with torch.inference_mode():
            t = time.perf_counter()
            gen_mod.prefill(model, ids, cache)
            return time.perf_counter() - t

    return run


def decode_fn(model, make_step, L: int = 2048, n: int = 32):
    """Seconds per decoded token (median of n) after an L-token prefill."""
    prompt = torch.randint(3, model.config.vocab_size, (1, L), generator=torch.Generator().manual_seed(1))

    def run():
        with torch.inference_mode():
            cache = model.new_cache(1, L + n + 1)
            tok = model(prompt, cache=cache)[:, -1].argmax(-1)
            step = make_step(cache)
            ts = []
            for _ in range(n):
                t = time.perf_counter()
                tok = step(tok).argmax(-1)
                ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    return run


def _inference_module(pkg: str):
    """The module holding ``prefill``: ``inference`` (or ``generate`` in older revisions)."""
    try:
        return importlib.import_module(f"{pkg}.inference")
    except ModuleNotFoundError:
        return importlib.import_module(f"{pkg}.generate")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", default="HEAD")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="train,prefill,decode")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    parts = set(a.only.split(","))
    import rnope
    import rnope.decode

    new_gen = _inference_module("rnope")

    tmp = tempfile.TemporaryDirectory()
    base_pkg = load_base(a.ref, Path(tmp.name))
    base_gen = _inference_module("rnope_base")
    res: dict = {"machine": bench.machine_info(), "ref": a.ref, "rounds": a.rounds, "rows": {}}
    compile = not a.no_compile

    def record(name, fns):
        times = bench.interleaved(fns, a.rounds)
        row = {k: statistics.median(v) for k, v in times.items()}
        row["raw"] = times
        res["rows"][name] = row
        print(f"[compare] {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "raw"), file=sys.stderr, flush=True)

    if "train" in parts:
        base, new = models(rnope, base_pkg, "rnope-swa", 512)
        record("train step eager (s)", {"before": train_fn(base, False), "after": train_fn(new, False)})
        if compile:
            base, new = models(rnope, base_pkg, "rnope-swa", 512)
            record("train step compiled (s)", {"before": train_fn(base, True), "after": train_fn(new, True)})
    if "prefill" in parts:
        for preset, L in (("rnope-swa", 2048), ("rnope-swa", 16384), ("rope", 16384)):
            base, new = models(rnope, base_pkg, preset, L + 1)
            record(f"prefill {preset} {L // 1024}k (s)", {"before": prefill_fn(base_gen, base.eval(), L), "after": prefill_fn(new_gen, new.eval(), L)})
    if "decode" in parts:
        base, new = models(rnope, base_pkg, "rnope-swa", 4096)
        base.eval(), new.eval()
        fns = {"before": decode_fn(base, lambda cache: (lambda tok: base(tok[:, None], cache=cache)[:, -1])),
               "after_eager": decode_fn(new, lambda cache: rnope.decode.Decoder(new, cache))}
        if compile:
            fns["after_compiled"] = decode_fn(new, lambda cache: rnope.decode.Decoder(new, cache, compile=True))
            fns["after_compiled"]()  # compile outside the timing
        record("decode after 2k prompt (s/token)", fns)
    rows = res["rows"]
    if "prefill rnope-swa 16k (s)" in rows and "prefill rope 16k (s)" in rows:
        res["swa_over_rope_16k"] = {k: rows["prefill rnope-swa 16k (s)"][k] / rows["prefill rope 16k (s)"][k] for k in ("before", "after")}
    lines = ["| workload | before | after | after / before |", "|---|---|---|---|"]
    for name, row in rows.items():
        for k in [k for k in row if k.startswith("after")]:
            label = name if k == "after" else f"{name} [{k[6:]}]"
            lines.append(f"| {label} | {row['before']:.4g} | {row[k]:.4g} | {row[k] / row['before']:.3f} |")
    if "swa_over_rope_16k" in res:
        r = res["swa_over_rope_16k"]
        lines.append(f"| prefill 16k rnope-swa / rope | {r['before']:.3f} | {r['after']:.3f} | |")
    res["markdown"] = "\n".join(lines)
    print(res["markdown"])
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
