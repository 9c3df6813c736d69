#!/usr/bin/env bash
# Session 2026-11-23, call 2: build, compute-sanitizer (memcheck/racecheck/synccheck over the CUDA op tests, memcheck over the CUDA backend suite).
export PYTHONUNBUFFERED=1
O=/tmp/g2; mkdir -p $O
pack() { tar czf $OUT/g2.tgz --exclude='*.safetensors' -C /tmp g2; }
t0=$(date +%s); el() { echo "[$(( $(date +%s)-t0 )) s] $*"; }
timeout 200 tools/gpu_check.sh $O machine build > $O/stage_build.txt 2>&1; el "build rc=$?"; pack
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])')
export LD_LIBRARY_PATH=/opt/deps/usr/lib/x86_64-linux-gnu:$cudnn/lib GATI_CUDNN_PLANS=off
B=build-gpu
left() { echo $(( 585 - ($(date +%s)-t0) )); }
timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/test_cuda_backend > $O/memcheck_cuda_backend.log 2>&1; el "memcheck cuda_backend rc=$?"; grep -E "ERROR SUMMARY|^\[  (FAILED|PASSED) " $O/memcheck_cuda_backend.log; grep -m5 -A12 "Invalid\|Error:" $O/memcheck_cuda_backend.log | head -50; pack
for tool in memcheck racecheck synccheck; do
  [ $(left) -lt 30 ] && break
  timeout $(( $(left) < 150 ? $(left) : 150 )) compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/test_backend_ops --gtest_filter='*cuda*:-*Convolutions*' > $O/${tool}_backend_ops.log 2>&1; el "$tool backend_ops rc=$?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^\[  (FAILED|PASSED) " $O/${tool}_backend_ops.log; grep -m5 -A12 "Invalid\|Error:\|Race" $O/${tool}_backend_ops.log | head -40; pack
done
