#!/usr/bin/env bash
# What the quality suite has produced so far, as one tarball: end EVERY wait call of a lease with it.
#
#   bash benchmarks/quality/lease_snapshot.sh /tmp/ccq-COMMIT/runs "$OUT"
#
# A lent machine goes back after 30 s without a call, and a reply can take longer than that to write; the
# 325e154 attempt lost a finished lane and every score that way, because only the last call was to copy them.
# Snapshots cost seconds (records, metrics, logs, the report: no images), so each call leaves the latest in $OUT.
set -u
RUNS=$1 DEST=$2
cd "$RUNS" || { echo "lease_snapshot: no $RUNS"; exit 1; }
# The driver's own log, when started as README "Next run" says (outside the working tree the calls replace).
[ -e /tmp/ccq-driver.log ] && cp /tmp/ccq-driver.log driver.log
items=()
for p in driver.log quality/results quality/stages quality/metrics quality/logs quality/suite_config.json \
         quality/gpu_tests.txt quality/gpu_tests.rc quality/suite.rc quality/after quality/after.log; do
  [ -e "$p" ] && items+=("$p")
done
tar -czf "$DEST/quality_snapshot.tgz" --exclude='*.npz' --exclude='*.pt' "${items[@]}"
echo "lease_snapshot: ${#items[@]} item(s), $(du -k "$DEST/quality_snapshot.tgz" | cut -f1) kB -> $DEST/quality_snapshot.tgz"
