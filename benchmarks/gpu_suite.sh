#!/usr/bin/env bash
# The GPU benchmark suite: ms_B8 BERT-base UWOX through the launcher's path (pretrain.build, the
# shipped DeepSpeed configs, the loop and the loader), beside a plain PyTorch loop of the same model.
# Made for one H100/H200 machine that has no package registry; at most ~8 minutes.
#
#   here, with a registry:  bash scripts/fetch_gpu_wheels.sh     # -> .whl/ (git-ignored), carried along
#   on the GPU machine:     bash benchmarks/gpu_suite.sh [OUT]   # JSON per run + OUT/gpu_suite.json
#   on this CPU, a smoke run of the same steps at toy sizes:   GPU_SUITE_SMOKE=1 bash benchmarks/gpu_suite.sh OUT
#
# Runs (each its own process, so one OOM or hang costs only its line):
#   1. ZeRO-2 bf16, micro-batch 64: project and plain, eager and compiled   -> ratio_vs_plain, graph_breaks
#   2. ZeRO-2 bf16, micro-batch 128, compiled, project only
#   3. ZeRO-3 bf16, micro-batch 64, eager, project only
#   4. ZeRO-2 bf16 + activation checkpointing, micro-batch 128, eager, project only
#   5. checkpoints (checkpoint_bench.py, ms_B8, ZeRO-2 bf16, micro-batch 64): each way's step stall as a
#      share of a 200-step interval                                        -> OUT/checkpoint/, "checkpoint"
# Each row: samples/s, step ms, TFLOP/s, MFU (797.5 GFLOP per sample, 989 TFLOP/s bf16 peak), peak GiB.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DS_BUILD_OPS=0 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
if [ -d .whl ] && ! $PY -c "import deepspeed, webdataset, boto3" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
WORK=${WORK:-/tmp/gpu_bench}
if [ "${GPU_SUITE_SMOKE:-0}" = 1 ]; then  # the same invocations at toy sizes, on the CPU
  export DS_ACCELERATOR=cpu
  EXTRA="--tiny --steps 2 --repeats 1 --warmup 1 --samples 96 --workers 1 --cpu-ds-config zero2.json"
  SMOKE_MODES="--modes eager"; LIMIT=300; MB64=8; MB128=16; CKPT="--sizes tiny --steps 2"
else
  EXTRA=""; SMOKE_MODES=""; LIMIT=240; MB64=64; MB128=128; CKPT="--sizes ms_b8 --steps 5"
  $PY -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print(torch.cuda.get_device_name())" || exit 1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
status=0
bench() {  # name, then train_bench arguments
  local name=$1; shift
  echo "== $name: train_bench.py $* $EXTRA $SMOKE_MODES"
  timeout "$LIMIT" $PY benchmarks/train_bench.py "$@" $EXTRA $SMOKE_MODES --work "$WORK" --out "$OUT/$name.json" \
    2>&1 | grep -vE "^\[20|FutureWarning|return func" | tail -n 30
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "!! $name failed"; status=1; }
}
bench zero2_mb64 --micro "$MB64" --modes eager compiled
bench zero2_mb128_compiled --micro "$MB128" --modes compiled --no-plain
bench zero3_mb64 --stages 3 --micro "$MB64" --modes eager --no-plain
bench zero2_mb128_actckpt --micro "$MB128" --modes eager --no-plain --activation-checkpointing
echo "== checkpoint: checkpoint_bench.py $CKPT --micro-batch $MB64"  # its own folder: not a train_bench run
timeout "$LIMIT" $PY benchmarks/checkpoint_bench.py $CKPT --micro-batch "$MB64" --work "$WORK/ckpt" \
  --out "$OUT/checkpoint/checkpoint_bench.json" 2>&1 | grep -vE "^\[20|FutureWarning|return func" | tail -n 8
[ "${PIPESTATUS[0]}" = 0 ] || { echo "!! checkpoint failed"; status=1; }
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.stem != "gpu_suite"}
rows = [dict(r, run=name) for name, res in runs.items() for r in res["rows"]]
first = runs.get("zero2_mb64", next(iter(runs.values()), {}))
summary = {"machine": first.get("machine"), "graph_breaks": first.get("graph_breaks"),
           "ratio_vs_plain": first.get("ratio_vs_plain"), "rows": rows}
ckpt = out / "checkpoint" / "checkpoint_bench.json"
if ckpt.exists():  # the stall of one checkpoint spread over a 200-step interval
    summary["checkpoint"] = [
        {k: r[k] for k in ("size", "way", "parameters", "bytes", "stall_s", "write_s", "load_s", "step_median_s")}
        | {"share_of_200_steps": round(r["stall_s"] / (200 * r["step_median_s"]), 5)}
        for size in json.loads(ckpt.read_text())["sizes"].values() for r in size["rows"]]
(out / "gpu_suite.json").write_text(json.dumps(summary, indent=1))
cols = ("run", "path", "mode", "stage", "micro_batch", "activation_checkpointing", "samples_per_s", "mfu",
        "peak_mem_gib", "error")
print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
for r in rows:
    print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
print(f"graph breaks {summary['graph_breaks']}, project/plain {summary['ratio_vs_plain']}")
for r in summary.get("checkpoint", []):
    print(f"checkpoint {r['way']}: stall {r['stall_s']:.2f} s = {100 * r['share_of_200_steps']:.2f}% of 200 steps")
PY
exit $status
