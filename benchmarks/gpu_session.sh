#!/usr/bin/env bash
# A whole GPU check in one command (≈8 minutes on an H100; give the call a 540 s limit):
#
#     bash benchmarks/gpu_session.sh            # logs and JSON under $OUT (default ./gpu_out)
#
# 1. the machine: GPU, driver, Python / torch / transformers versions;
# 2. benchmarks/gpu_check.py: FlexAttention / blockwise-SDPA sliding kernels vs the fp32 reference
#    (fwd + bwd, fp32 + bf16), the model's fast paths vs the reference, cached decode eager and
#    compiled, and a compiled bf16 training step of a ≈125M rnope-swa at T = 8192 (tok/s, MFU, and a
#    profile of two steps: the top kernels and the matmul / attention / other shares);
# 3. the training CLI on CUDA: one process with --compile, and torchrun with one rank under FSDP2
#    and under DDP (nccl), each checked for finite losses and the device it reports;
# 4. the CPU test suite (GPU hidden, tests/conftest.py) against this machine's torch / transformers
#    versions, in the background from the start, on CPU cores the GPU work leaves idle.
# Every step has its own time limit, so one hang cannot eat the GPU time; the summary is printed last.
# Knobs: SECTIONS (gpu_check's, default kernels,model,train), BUDGET_S (its deadline, default 300),
# SKIP_CLI=1 (no training CLI runs), TEST_WORKERS (default 6), TEST_TIMEOUT_S (default 300).
set -u
cd "$(dirname "$0")/.."
O=${OUT:-gpu_out}
mkdir -p "$O"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
SUMMARY=()
note() { SUMMARY+=("$1"); echo "=== $1"; }

echo "=== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY -c "import sys, torch, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| transformers', transformers.__version__)"
# no index on the device machine: the dependencies must already be there
$PY -m pip install -q --no-deps --no-build-isolation -e . >"$O/pip.log" 2>&1 || export PYTHONPATH=$PWD
$PY -c "import rnope; print('rnope from', rnope.__file__)"

echo "=== tests started in the background ($O/pytest.log)"
OMP_NUM_THREADS=1 timeout "${TEST_TIMEOUT_S:-300}" $PY -m pytest -v -n "${TEST_WORKERS:-6}" -p no:cacheprovider >"$O/pytest.log" 2>&1 &
TESTS=$!

echo "=== gpu_check.py"
timeout 360 $PY benchmarks/gpu_check.py --sections "${SECTIONS:-kernels,model,train}" --budget-s "${BUDGET_S:-300}" \
  --profile --json "$O/gpu_check.json" >"$O/gpu_check.log" 2>&1
note "gpu_check rc=$? (0 = every check passed; $O/gpu_check.json)"
$PY - "$O/gpu_check.json" <<'EOF' || true
import json, sys
s = json.load(open(sys.argv[1]))
print("device", s.get("device"), "| torch", s.get("torch"), "| elapsed", round(s.get("elapsed_s", 0)), "s")
for k, v in s.get("kernels", {}).items():
    if isinstance(v, dict):
        print(f"  kernel {k:32s} " + " ".join(f"{a}={b:.2e}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items()))
m = s.get("model", {})
print("  model", {k: v for k, v in m.items() if k not in ("decode_eager", "decode_compiled")})
for k in ("decode_eager", "decode_compiled"):
    if k in m:
        print(f"  {k}: maxerr {m[k]['maxerr']:.2e}, {m[k]['ms_per_step']:.2f} ms/step, compiled={m[k]['compiled']}")
t = s.get("train", {})
print("  train", {k: t.get(k) for k in ("params", "batch", "seq_len", "mm_peak_tflops", "nominal_bf16_tflops", "error")})
for name, r in t.get("variants", {}).items():
    keys = ("loss_in_graph", "first_step_s", "step_s", "tok_per_s", "achieved_tflops", "mfu_vs_measured_mm", "mfu_vs_nominal", "max_memory_gb", "error", "skipped", "note")
    print(f"  train[{name}]", {k: (round(r[k], 4) if isinstance(r[k], float) else r[k]) for k in keys if k in r})
    if "profile" in r:
        p = r["profile"]
        print(f"    profile: {p['total_ms_per_step']:.1f} ms of kernels per step;", {k: round(v, 3) for k, v in p["share"].items()})
        for t in p["top"][:8]:
            print(f"      {t['ms_per_step']:8.2f} ms  {t['share']:.3f}  {t['name'][:90]}")
EOF

echo "=== rnope train on CUDA"
check_run() {  # DIR: losses finite, a checkpoint written, trained on cuda
  $PY - "$1" <<'EOF'
import json, math, os, sys
from pathlib import Path
d = Path(sys.argv[1])
rows = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines() if l.strip()]
losses = [r["loss"] for r in rows if "loss" in r]
run = json.loads((d / "run.json").read_text())
ck = sorted(p.name for p in (d / "checkpoints").iterdir())
tok = [r["tok_per_s"] for r in rows if "tok_per_s" in r]
ok = bool(losses) and all(math.isfinite(x) for x in losses) and str(run.get("device", "")).startswith(os.environ.get("EXPECT_DEVICE", "cuda")) and bool(ck)
print(f"{d.name}: {len(losses)} loss rows, first {losses[0]:.4f} last {losses[-1]:.4f}, tok/s {tok[-1] if tok else None}, checkpoints {ck}, ok={ok}")
sys.exit(0 if ok else 1)
EOF
}
R=$(mktemp -d -t rnope_gpu_runs.XXXX)

if [ "${SKIP_CLI:-0}" != 1 ]; then
timeout 150 $PY -m rnope train --config configs/debug.yaml --out $R/single --cache-dir $R/cache --compile >"$O/train_single.log" 2>&1
note "train single --compile rc=$?"; check_run $R/single; note "  check rc=$?"
for mode in fsdp ddp; do
  timeout 120 $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m rnope train --config configs/debug.yaml \
    --out $R/$mode --cache-dir $R/cache --distributed $mode >"$O/train_$mode.log" 2>&1
  note "torchrun $mode rc=$?"; check_run $R/$mode; note "  check rc=$?"
done
fi

echo "=== tests (CPU suite, this machine's library versions)"
wait $TESTS
note "pytest rc=$?: $(tail -n 1 "$O/pytest.log")"
grep -E "(FAILED|ERROR) " "$O/pytest.log" | grep -v "^tests.*PASSED" | head -20

echo "=== summary"
printf '%s\n' "${SUMMARY[@]}"
