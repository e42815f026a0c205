#!/usr/bin/env bash
# The quality suite on one lent GPU machine, detached from the device call that starts it (README, "Next run").
#
#   setsid nohup bash benchmarks/quality/lease_driver.sh COMMIT LEASE_START_EPOCH [GPU_TESTS=0|1] \
#       > runs/driver.log 2>&1 < /dev/null &
#
# Needs /tmp/data (pack_data unpack) with at least the training shards; the rest may still be arriving.
# - Runs the suite in two lanes on the one GPU, with a deadline 3 minutes before the lease's 30 minutes end.
# - With GPU_TESTS=1 it also runs the GPU tests once samples_ct exists and /tmp/ort.ready says onnxruntime-gpu
#   is unpacked in /tmp/site. They run beside the classifier training, which counts iterations, not minutes, and
#   with few threads: at -n 8 they starved it.
# - Writes the report under runs/quality/results (the device's copy of the tree restores the committed one in
#   benchmarks/results/). Each part ends by writing its exit code to runs/*.rc.
set -u
cd "$(dirname "$0")/../.."
COMMIT=$1 START=$2 GPU_TESTS=${3:-0}
log() { echo "[driver $(date +%T) +$(( $(date +%s) - START ))s] $*"; }
LEFT_MIN=$(python3 -c "import time; print(max(1.0, ($START + 27 * 60 - time.time()) / 60))")
BASE=(python -m benchmarks.quality.run --data-dir /tmp/data --out-dir runs/quality
      --results-dir runs/quality/results --device cuda --inception /tmp/data/inception/default_1.pt
      --commit "$COMMIT" --no-act --gen-iters 3115 --workers 4 --quiet)
SUITE=("${BASE[@]}" --lanes 2 --share-gpu)
if [ "$GPU_TESTS" = 1 ]; then
  ( while [ ! -f runs/quality/stages/samples_ct.json ] || [ ! -f /tmp/ort.ready ]; do sleep 5; done
    log "GPU tests start"
    OMP_NUM_THREADS=2 PYTHONPATH=/tmp/site python3 -m pytest -q -n 3 -rfEs -p no:cacheprovider \
      tests/test_triton_engine.py tests/test_ort_engine.py tests/test_kernel_objective_head.py \
      tests/test_kernel_pgd_step.py tests/test_kernel_conv1x1.py tests/test_engine_options.py tests/test_devices.py \
      > runs/gpu_tests.txt 2>&1
    echo $? > runs/gpu_tests.rc; log "GPU tests exit $(cat runs/gpu_tests.rc)" ) &
fi
log "suite, deadline $LEFT_MIN min: ${SUITE[*]}"
"${SUITE[@]}" --deadline-minutes "$LEFT_MIN"; rc=$?
log "suite exit $rc"
if [ $rc = 3 ]; then "${BASE[@]}" --stages report; log "report exit $?"; fi  # from whatever was scored
echo $rc > runs/quality.rc
