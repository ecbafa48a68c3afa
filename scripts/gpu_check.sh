#!/usr/bin/env bash
# The GPU protocol: what to run first on any CUDA machine (benchmarks/RESULTS.md, "GPU protocol").
#
#   bash scripts/gpu_check.sh A [OUT]   no DALI needed: Triton kernel tests and benchmarks (fused loss vs eager
#                                       and compiled references, EMA bandwidth vs a device copy), the trainer's
#                                       step on synthetic batches vs the model-only ceiling vs the baseline,
#                                       host syncs per step, compiled == eager on the GPU
#   bash scripts/gpu_check.sh B [OUT]   with DALI: the end-to-end step (it/s, time blocked in next()) vs the
#                                       synthetic step vs the ceiling vs the baseline, DALI views/s, the GPU
#                                       pipeline and trainer tests
#   GPU_CHECK_DRY=1 bash scripts/gpu_check.sh A|B [OUT]   the same stages at tiny sizes on the CPU (tested in CI)
#
# FixMatch, WRN-28-2, CIFAR-10 shapes (random images: speed does not depend on content), B=64, μ=7.
# Targets, printed PASS/FAIL: >= 150 it/s end to end, >= 90% of the ceiling, >= 25x the baseline, 0 host syncs
# per step (phase A prints them for the synthetic step, phase B end to end).
#
# Runs from a bare checkout (PYTHONPATH=. is set here; an install works too). Every stage runs under
# `timeout`, within a phase budget of GPU_CHECK_BUDGET seconds (default 300; a stage that would start with
# under 20 s left is skipped and recorded so), most important stages first. Results land in OUT (default: the
# device tool's $OUT, else benchmarks/results/gpu-check-<UTC time>) as each stage ends, 4 files per phase
# (both phases fit one folder: 8 files, none over 16 MiB): summary-<P>.json (stage status, figures, targets),
# log-<P>.txt (every stage's output), results-<P>.json (the benchmarks' JSON by stage), trace-<P>.json.gz
# (torch.profiler, 5 steps of the phase's step).
set -uo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:-}
[[ $PHASE == A || $PHASE == B ]] || { echo "usage: bash scripts/gpu_check.sh A|B [OUT]  (GPU_CHECK_DRY=1: CPU smoke run)" >&2; exit 2; }
OUTDIR=${2:-${OUT:-benchmarks/results/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
DRY=${GPU_CHECK_DRY:-0}
BUDGET=${GPU_CHECK_BUDGET:-300}
PY=${PYTHON:-python3}
REPORT=scripts/gpu_check_report.py
LOG="$OUTDIR/log-$PHASE.txt"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [[ $DRY == 1 ]]; then  # the same stages at sizes a 2-core CPU runs in seconds
    DEV=cpu MODEL=cnn_small B=2 MU=2 SIZE=16 NTRAIN=256 NLAB=20 WARM=1 ROUNDS=2 CHUNK=2 SYNC=2 PROF=2
    BWARM=1 BCHUNK=1 KSEL="448-10-eager_reference" PIPE="--workers 0 --batches 1 --rounds 2 --dali-threads 1"
else
    export TRITON_INTERPRET=0  # real Triton on the GPU (tests/conftest.py leaves it unset when CUDA is there)
    DEV=cuda MODEL=wrn_28_2 B=64 MU=7 SIZE=32 NTRAIN=50000 NLAB=4000 WARM=30 ROUNDS=5 CHUNK=50 SYNC=20 PROF=5
    # kernel benchmarks: the FixMatch loss shape (448x10; each compiled variant costs a compile) and the EMA
    BWARM=2 BCHUNK=3 KSEL="448-10- or ema" PIPE="--workers 4 --batches 5 --rounds 3 --dali-threads 4"
fi
STEP_ARGS=(--algo fixmatch --model "$MODEL" --batch-size "$B" --uratio "$MU" --image-size "$SIZE" --data random
           --num-train "$NTRAIN" --num-labels "$NLAB" --device "$DEV")
START=$SECONDS

# stage NAME LIMIT JSON|- CMD...: CMD under `timeout` (at most LIMIT s, and what is left of the budget); its
# output goes to the log, its status (and JSON, when it wrote one) to the output folder.
stage() {
    local name=$1 limit=$2 json=$3 rc=0 t0=$SECONDS
    shift 3
    local left=$((BUDGET - (SECONDS - START)))
    ((left < limit)) && limit=$left
    echo "== [$PHASE] $name: $* (limit ${limit}s)" | tee -a "$LOG"
    if ((limit < 20)); then
        rc=-1
        echo "skipped: phase budget spent" > "$WORK/$name.out"
    else
        timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.out" 2>&1 || rc=$?
    fi
    cat "$WORK/$name.out" >> "$LOG"
    echo "== [$PHASE] $name: rc=$rc after $((SECONDS - t0))s" | tee -a "$LOG"
    "$PY" "$REPORT" stage "$OUTDIR" "$PHASE" "$name" "$rc" "$((SECONDS - t0))" "$limit" "$WORK/$name.out" \
        $([[ $json != - ]] && echo "$json")
}

# env: what ran where (also in every JSON)
cat > "$WORK/env.py" <<'PYEOF'
import os, sys
import torch, triton
print("python", sys.version.split()[0], "| torch", torch.__version__, "| triton", triton.__version__,
      "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version())
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)")
print("TRITON_INTERPRET =", os.environ.get("TRITON_INTERPRET"))
try:
    import nvidia.dali
    print("DALI", nvidia.dali.__version__)
except ImportError as e:
    print("DALI: not importable:", e)
PYEOF
stage env 60 - bash -c "(nvidia-smi || true) 2>&1 | head -n 15; $PY $WORK/env.py"

if [[ $PHASE == A ]]; then
    stage kernel_tests 150 - "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider \
        tests/test_kernels_ce.py tests/test_kernels_ema.py tests/test_ema.py
    # the trainer's step alone (synthetic batches, no DALI) beside the model-only ceiling, interleaved
    stage step 200 "$WORK/step.json" "$PY" -m fastssl bench step "${STEP_ARGS[@]}" --systems fastssl_synth,ceiling \
        --warmup "$WARM" --rounds "$ROUNDS" --chunk "$CHUNK" --sync-steps "$SYNC" \
        --profile "$WORK/prof" --profile-steps "$PROF" --json "$WORK/step.json"
    cp "$WORK/prof/fastssl_synth_trace.json.gz" "$OUTDIR/trace-A.json.gz" 2>/dev/null
    stage trainer_tests 150 - "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider tests/test_trainer_gpu.py -k synthetic
    stage kernel_bench 150 "$WORK/kernels.json" "$PY" -m pytest -q -s -p no:cacheprovider benchmarks/bench_kernels.py \
        -k "$KSEL" --benchmark-enable --benchmark-max-time=0.2 --benchmark-json="$WORK/kernels.json"
else
    # end to end: DALI on the GPU feeding the compiled step, beside the synthetic step and the ceiling
    stage step 200 "$WORK/step.json" "$PY" -m fastssl bench step "${STEP_ARGS[@]}" \
        --systems fastssl,fastssl_synth,ceiling --warmup "$WARM" --rounds "$ROUNDS" --chunk "$CHUNK" \
        --sync-steps "$SYNC" --dali-threads 4 --profile "$WORK/prof" --profile-steps "$PROF" --json "$WORK/step.json"
    cp "$WORK/prof/fastssl_trace.json.gz" "$OUTDIR/trace-B.json.gz" 2>/dev/null
fi
# the reference-style baseline is CPU-bound (PIL workers): a few steps suffice for its speed
stage baseline 120 "$WORK/baseline.json" "$PY" -m fastssl bench step "${STEP_ARGS[@]}" --systems baseline \
    --warmup "$BWARM" --rounds 2 --chunk "$BCHUNK" --settle 0 --sync-steps 1 --json "$WORK/baseline.json"
if [[ $PHASE == B ]]; then
    stage pipeline 120 "$WORK/pipeline.json" "$PY" -m fastssl bench pipeline --batch-size "$B" --uratio "$MU" \
        --image-size "$SIZE" --data random --num-train "$NTRAIN" --num-labels "$NLAB" --device "$DEV" $PIPE \
        --json "$WORK/pipeline.json"
    stage dali_tests 200 - "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider tests/test_pipeline.py \
        tests/test_pipeline_gpu_graph.py tests/test_augment.py tests/test_trainer_gpu.py -k "not synthetic"
fi

"$PY" "$REPORT" finish "$OUTDIR" "$PHASE" | tee -a "$LOG"
# what comes back from the device tool: no file over 16 MiB (a log keeps its end; a larger trace is dropped)
for f in "$OUTDIR"/*; do
    (($(stat -c %s "$f") <= 16 * 1024 * 1024)) && continue
    case $f in
        *.txt) tail -c $((15 * 1024 * 1024)) "$f" > "$WORK/cut" && mv "$WORK/cut" "$f" ;;
        *) echo "dropped $f: over 16 MiB" | tee -a "$LOG"; rm -f "$f" ;;
    esac
done
echo "phase $PHASE done in $((SECONDS - START))s; results in $OUTDIR:"
ls -l "$OUTDIR"
