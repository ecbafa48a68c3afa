#!/usr/bin/env bash
# The whole GPU benchmark protocol in one go (benchmarks/RESULTS.md, "GPU protocol").
#
#   bash scripts/gpu_bench.sh [OUT_DIR]          # from the repository root, on a machine with a CUDA GPU
#
# FixMatch, WRN-28-2, CIFAR-10 shapes (32x32x3, 10 classes), B=64, mu=7 (960 images per step):
#   1. side-by-side step benchmark: fastssl vs reference-style baseline vs model-only ceiling, plus the
#      compile-off variants; host syncs per step (sync debug mode) and peak memory; a torch.profiler trace
#   2. the same with the small CNN (launch-bound end of the range)
#   3. pipeline throughput: DALI (GPU ops) vs PIL DataLoader workers (1, 2, 4, all cores), interleaved,
#      and the pytest-benchmark suite (JSON)
#   4. kernels (benchmarks/bench_kernels.py, when present)
#   5. 1 vs 2 GPUs at the same global batch (NCCL), when 2+ GPUs are visible
# then checks the targets: fastssl >= 120 it/s, >= 85% of the ceiling, >= 20x the baseline, 0 syncs/step.
# Every JSON carries versions, GPU, git SHA and the command; copy the summary into benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
export FASTSSL_CIFAR10_NPZ=${FASTSSL_CIFAR10_NPZ:-/work/shared/data/cifar10.npz}  # random data if absent

"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "gpu_bench.sh needs a CUDA GPU; on CPU run python -m fastssl.bench.step"
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$OUT/nvidia-smi.csv" || true

echo "== 1. step: FixMatch WRN-28-2 B=64 mu=7 (baseline / fastssl / ceiling + compile-off variants)"
"$PY" -m fastssl.bench.step --algo fixmatch --model wrn_28_2 --batch-size 64 --uratio 7 \
    --warmup 30 --rounds 6 --chunk 50 --settle 2 --variants --sync-steps 20 \
    --profile "$OUT/profile" --json "$OUT/step_wrn_28_2.json" | tee "$OUT/step_wrn_28_2.txt"

echo "== 1b. baseline with 4 workers per loader (the reference given more CPU; context for the 20x)"
"$PY" -m fastssl.bench.step --model wrn_28_2 --batch-size 64 --uratio 7 --systems baseline,fastssl \
    --baseline-workers 4 --warmup 20 --rounds 4 --chunk 30 --json "$OUT/step_wrn_28_2_baseline4w.json" \
    | tee "$OUT/step_wrn_28_2_baseline4w.txt"

echo "== 2. step: FixMatch cnn_small B=64 mu=7"
"$PY" -m fastssl.bench.step --model cnn_small --batch-size 64 --uratio 7 --warmup 30 --rounds 6 \
    --chunk 50 --variants --json "$OUT/step_cnn_small.json" | tee "$OUT/step_cnn_small.txt"

echo "== 3. pipelines: DALI GPU vs PIL workers (B=64, mu=7)"
"$PY" -m fastssl.bench.pipeline --batch-size 64 --uratio 7 --workers 1,2,4 --all-cores --rounds 5 \
    --batches 10 --json "$OUT/pipeline.json" | tee "$OUT/pipeline.txt"
FASTSSL_BENCH_B=64 FASTSSL_BENCH_MU=7 FASTSSL_BENCH_BATCHES=10 "$PY" -m pytest benchmarks/bench_pipeline.py \
    -q --benchmark-enable --benchmark-json="$OUT/pipeline_pytest_benchmark.json" | tail -n 20

if [[ -f benchmarks/bench_kernels.py ]]; then
    echo "== 4. kernels"
    "$PY" -m pytest benchmarks/bench_kernels.py -q --benchmark-enable \
        --benchmark-json="$OUT/kernels_pytest_benchmark.json" | tail -n 30 || echo "kernel benchmarks failed"
fi

NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [[ "$NGPU" -ge 2 ]]; then
    echo "== 5. scaling: 1 vs 2 GPUs, global batch 64, mu=7 (NCCL)"
    "$PY" -m fastssl.bench.scaling --model wrn_28_2 --batch-size 64 --uratio 7 --nprocs 1,2 --repeats 2 \
        --warmup 30 --rounds 5 --chunk 50 --threads 4 --dali-threads 4 --json "$OUT/scaling.json" \
        | tee "$OUT/scaling.txt"
else
    echo "== 5. scaling skipped: $NGPU GPU visible (needs 2)"
fi

echo "== targets"
"$PY" - "$OUT/step_wrn_28_2.json" <<'EOF' | tee "$OUT/targets.txt"
import json, sys
r = json.load(open(sys.argv[1]))
f, rat = r["systems"]["fastssl"], r["ratios"]
if "it_s" not in f:
    sys.exit(f"FAIL  fastssl did not run: {f.get('error')}")
nan = float("nan")
checks = [
    ("fastssl >= 120 it/s", f["it_s"], f["it_s"] >= 120),
    ("fastssl/ceiling >= 0.85", rat.get("fastssl/ceiling", nan), rat.get("fastssl/ceiling", 0) >= 0.85),
    ("fastssl/baseline >= 20", rat.get("fastssl/baseline", nan), rat.get("fastssl/baseline", 0) >= 20),
    ("fastssl syncs/step == 0", f.get("syncs_per_step"), f.get("syncs_per_step") == 0 and f.get("sync_free")),
]
for name, val, ok in checks:
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {val if not isinstance(val, float) else round(val, 3)}")
e = r["env"]
print(f"\n| {e['date_utc'][:10]} | {e['gpu']} | torch {e['torch']}, triton {e['triton']}, DALI {e['dali']} | "
      f"{e['git_sha'][:10]} | {r['systems']['baseline'].get('it_s', nan):.1f} | {f['it_s']:.1f} | "
      f"{r['systems']['ceiling'].get('it_s', nan):.1f} | {rat.get('fastssl/baseline', nan):.1f}x | "
      f"{rat.get('fastssl/ceiling', nan):.2f} |")
print("(row for the GPU table in benchmarks/RESULTS.md)")
EOF
"$PY" -m fastssl.bench.summarize "$OUT"/step_*.json "$OUT/pipeline.json" $( [[ -f "$OUT/scaling.json" ]] && echo "$OUT/scaling.json" ) \
    > "$OUT/summary.md"
echo "all results in $OUT; tables for benchmarks/RESULTS.md in $OUT/summary.md"
