"""rnope vs llama.cpp on an exported GGUF file: tokenization, greedy tokens and logits.

    python benchmarks/llama_cpp_parity.py                          # tiny random rnope-swa and swa models
    python benchmarks/llama_cpp_parity.py --ckpt runs/rnope-swa --tokens 64 --gguf-dtype f16
    python benchmarks/llama_cpp_parity.py --out parity.json

Each model is written with ``rnope export --format gguf`` semantics (:func:`rnope.interop.gguf.export_gguf`)
into a temporary directory, then run by llama.cpp:

* with **llama-cpp-python** (``import llama_cpp``): the prompt's token ids from llama.cpp's own
  tokenizer (no BOS, special-token text not parsed) against rnope's; ``--tokens`` greedy tokens
  from llama.cpp's logits against rnope's greedy tokens; and every position's logits of prompt +
  rnope's continuation, max |Δ| (f32 export: expect ~1e-5; f16 export: ~1e-2);
* otherwise with a llama.cpp binary on ``PATH`` (``llama-completion``, then ``llama-cli``):
  greedy text only (``--temp 0 --no-parse-special``), checked to contain rnope's greedy
  continuation.

With neither, or without the ``gguf`` package, it prints why it is skipped and exits 0. Exit code 1
when a comparison that ran disagrees.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from rnope import ModelConfig, Transformer  # noqa: E402
from rnope.tokenizer import Tokenizer  # noqa: E402

PROMPT = "Once upon a time, in a small town by the sea, there lived"
BINARIES = ("llama-completion", "llama-cli")
SHAPE = dict(vocab_size=320, n_layer=4, d_model=64, n_head=4, n_kv_head=2, d_ff=128, max_seq_len=512, window=16, logit_scale=0.5)


def skip(why: str) -> int:
    print(json.dumps({"skipped": why}))
    return 0


def random_model(preset: str, seed: int = 0) -> Transformer:
    """Random weights large enough (std 0.3, embeddings 1.0, norms 1±0.2) that greedy decoding is not flat."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.from_preset(preset, **SHAPE))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
            else:
                p.normal_(0, 1.0 if "embed" in name else 0.3)
    return model.eval()


@torch.no_grad()
def rnope_greedy(model: Transformer, ids: list[int], n: int) -> list[int]:
    seq = list(ids)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]), logits_to_keep=1)[0, -1].argmax()))
    return seq[len(ids) :]


def with_python(path: Path, model: Transformer, tok, prompt: str, n: int, threads: int) -> dict:
    import llama_cpp
    import numpy as np

    ids = tok.encode(prompt)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(ids) + n + 8, logits_all=True, n_threads=threads, verbose=False)
    theirs_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=False)
    ours = rnope_greedy(model, ids, n)
    llm.reset()
    llm.eval(ids)
    greedy = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(nxt)
        llm.eval([nxt])
    seq = ids + ours
    llm.reset()
    llm.eval(seq)
    theirs = torch.from_numpy(np.array(llm.scores[: len(seq)], dtype=np.float32))
    with torch.no_grad():
        want = model(torch.tensor([seq]))[0].float()
    delta = (theirs[:, : want.shape[1]] - want).abs().max().item()
    first = next((i for i, (a, b) in enumerate(zip(greedy, ours)) if a != b), None)
    return {
        "backend": f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')}",
        "tokenize_equal": list(theirs_ids) == ids,
        "greedy_equal": greedy == ours,
        "first_greedy_difference": first,
        "logits_max_abs_delta": delta,
        "positions": len(seq),
    }


def with_binary(binary: str, path: Path, model: Transformer, tok, prompt: str, n: int, threads: int) -> dict:
    ours = tok.decode(rnope_greedy(model, tok.encode(prompt), n))
    cmd = [binary, "-m", str(path), "-p", prompt, "-n", str(n), "--temp", "0", "--top-k", "1", "--no-parse-special",
           "--seed", "0", "-t", str(threads), "--no-warmup"]
    if binary.endswith("llama-cli"):
        cmd.append("-no-cnv")
    r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=600)
    ok = r.returncode == 0 and ours.strip() in r.stdout
    return {"backend": binary, "command": " ".join(cmd), "returncode": r.returncode, "greedy_text_found": ok,
            "rnope_text": ours, "llama_cpp_stdout_tail": r.stdout[-2000:], "stderr_tail": r.stderr[-1000:] if not ok else ""}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", help="rnope checkpoint / run (default: tiny random rnope-swa and swa models)")
    ap.add_argument("--presets", default="rnope-swa,swa,rnope", help="presets of the random models")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--gguf-dtype", choices=("f32", "f16"), default="f32")
    ap.add_argument("--threads", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("gguf") is None:
        return skip("the 'gguf' package is not installed (pip install 'rnope[gguf]')")
    if importlib.util.find_spec("llama_cpp") is not None:
        backend = "python"
    else:
        backend = next((b for b in BINARIES if shutil.which(b)), None)
    if backend is None:
        return skip(f"neither llama-cpp-python (import llama_cpp) nor a llama.cpp binary ({', '.join(BINARIES)}) is available")
    from rnope.interop.gguf import export_gguf

    if args.ckpt:
        from rnope.checkpoint import load

        model, tok = load(args.ckpt)
        runs = [(Path(args.ckpt).name, model.float().eval(), tok)]
    else:
        runs = [(p, random_model(p), Tokenizer.byte_level()) for p in args.presets.split(",") if p]
    results, ok = {}, True
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        for name, model, tok in runs:
            path = export_gguf(model, Path(d) / f"{name}.gguf", tok, dtype=args.gguf_dtype)
            if backend == "python":
                res = with_python(path, model, tok, args.prompt, args.tokens, args.threads)
                tol = 1e-4 if args.gguf_dtype == "f32" else 5e-2
                res["pass"] = res["tokenize_equal"] and res["greedy_equal"] and res["logits_max_abs_delta"] < tol
            else:
                res = with_binary(backend, path, model, tok, args.prompt, args.tokens, args.threads)
                res["pass"] = res["greedy_text_found"]
            res["gguf_dtype"] = args.gguf_dtype
            results[name] = res
            ok &= res["pass"]
            print(f"{name}: {'PASS' if res['pass'] else 'FAIL'} " + json.dumps({k: v for k, v in res.items() if not k.endswith('_tail')}))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
