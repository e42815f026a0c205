#!/usr/bin/env bash
# The quality suite on one lent GPU machine, detached from the device call that starts it (README, "Next run").
#
#   setsid nohup bash benchmarks/quality/lease_driver.sh COMMIT LEASE_START_EPOCH [GPU_TESTS=0|1] [SUITE ARGS...] \
#       > /tmp/ccq-driver.log 2>&1 < /dev/null &
#
# Reads QUALITY_DATA (default /tmp/data: pack_data unpack's output, at least the training shards; the rest may
# still be arriving) and writes under QUALITY_OUT (default runs/quality).
# - Runs the suite in two lanes on the one GPU, with a deadline 3 minutes before the lease's LEASE_MINUTES (default
#   30) end.
#   SUITE ARGS are appended, so they override the defaults below (the CPU test runs it with --smoke --device cpu).
# - Writes the report to QUALITY_OUT/results: the device's copy of the tree restores the committed files in
#   benchmarks/results/. If the deadline stops the suite (exit code 3), it writes the report from whatever was
#   scored.
# - With GPU_TESTS=1 it also runs the GPU tests into QUALITY_OUT/gpu_tests.txt, once clf_robust is done and
#   /tmp/ort.ready says onnxruntime-gpu is unpacked in /tmp/site. They run beside the generator and the joint
#   model's training, which count iterations, not minutes, and end before the final step times its refinements
#   alone; with few threads, because at -n 8 they starved the training of CPU.
# - With AFTER_SUITE='COMMAND' (run by bash), once the suite has ended, it spends what is left of the lease (down
#   to 90 s before its end, when at least 2 minutes are left) on COMMAND, with AFTER_DIR=QUALITY_OUT/after (its
#   output folder; the snapshots carry it) and AFTER_BUDGET_S (30 s less than the time after which it is killed,
#   for a command that stops itself in time) in its environment, PYTHONPATH=/tmp/site, and its log in QUALITY_OUT/after.log. After the suite, so that neither
#   times its work beside the other's. E.g. AFTER_SUITE='python3 benchmarks/bench_bottleneck.py --out "$AFTER_DIR"'.
# - Exit codes go to QUALITY_OUT/suite.rc and QUALITY_OUT/gpu_tests.rc.
# - Runs from a private copy of the tree (QUALITY_TREE, default /tmp/ccq-COMMIT): every device call replaces the
#   working tree's files while it copies them in, and a stage that imports a module at that moment fails (the
#   325e154 attempt lost clf_robust to `No module named 'ccfast.devices'`). A relative QUALITY_OUT is under it.
set -u
cd "$(dirname "$0")/../.."
COMMIT=$1 START=$2 GPU_TESTS=${3:-0}
shift $(( $# < 3 ? $# : 3 ))
TREE=${QUALITY_TREE:-/tmp/ccq-$COMMIT}
rm -rf "$TREE" && mkdir -p "$TREE" && tar --exclude=./runs --exclude=./.git -c . | tar -C "$TREE" -x || exit 1
cd "$TREE"
DATA=${QUALITY_DATA:-/tmp/data} OUT=${QUALITY_OUT:-runs/quality}
mkdir -p "$OUT"
log() { echo "[driver $(date +%T) +$(( $(date +%s) - START ))s] $*"; }
# LEASE_MINUTES: the device time this session has left when the lease starts (status's budget_left_s / 60), when
# failed start-ups have already spent part of the 30 minutes.
LEASE_MIN=${LEASE_MINUTES:-30}
LEFT_MIN=$(python3 -c "import time; print(round(max(1.0, ($START + ($LEASE_MIN - 3) * 60 - time.time()) / 60), 2))")
BASE=(python -m benchmarks.quality.run --data-dir "$DATA" --out-dir "$OUT" --results-dir "$OUT/results"
      --device cuda --inception "$DATA/inception/default_1.pt" --commit "$COMMIT" --no-act --gen-iters 3115
      --workers 4 --quiet "$@")
if [ "$GPU_TESTS" = 1 ]; then
  ( while [ ! -f "$OUT/stages/clf_robust.json" ] || [ ! -f /tmp/ort.ready ]; do sleep 5; done
    log "GPU tests start"
    OMP_NUM_THREADS=2 PYTHONPATH=/tmp/site python3 -m pytest -q -n 3 -rfEs -p no:cacheprovider \
      tests/test_triton_engine.py tests/test_ort_engine.py tests/test_kernel_objective_head.py \
      tests/test_kernel_pgd_step.py tests/test_kernel_conv1x1.py tests/test_kernel_bottleneck.py \
      tests/test_fused_resnet.py tests/test_engine_options.py tests/test_devices.py > "$OUT/gpu_tests.txt" 2>&1
    echo $? > "$OUT/gpu_tests.rc"; log "GPU tests exit $(cat "$OUT/gpu_tests.rc")" ) &
fi
log "tree $TREE"; log "suite, deadline $LEFT_MIN min: ${BASE[*]} --lanes 2 --share-gpu"
"${BASE[@]}" --lanes 2 --share-gpu --deadline-minutes "$LEFT_MIN"; rc=$?
log "suite exit $rc"
if [ $rc = 3 ]; then "${BASE[@]}" --stages report; log "report exit $?"; fi
echo $rc > "$OUT/suite.rc"
if [ -n "${AFTER_SUITE:-}" ]; then
  REM=$(python3 -c "import time; print(int($START + ($LEASE_MIN - 1.5) * 60 - time.time()))")
  if [ "$REM" -gt 120 ]; then
    log "after the suite, $REM s left: $AFTER_SUITE"
    mkdir -p "$OUT/after"
    AFTER_DIR="$OUT/after" AFTER_BUDGET_S=$(( REM - 30 )) PYTHONPATH=/tmp/site timeout "$REM" \
      bash -c "$AFTER_SUITE" > "$OUT/after.log" 2>&1
    log "after the suite: exit $?"
  else
    log "after the suite: skipped, $REM s left"
  fi
fi
wait
