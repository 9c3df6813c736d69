#!/usr/bin/env bash
# Session 2026-11-23 (fourteenth), call 1: build; the CUDA op tests (bitwise exit kernels incl. staged, compaction), the CUDA backend
# suite (batch-1 compaction in one launch, the refactor), memcheck/racecheck over the exit ops, then all of ctest.
export PYTHONUNBUFFERED=1
O=/tmp/g7; mkdir -p $O
pack() { tar czf $OUT/g7.tgz --exclude='*.safetensors' -C /tmp g7; }
t0=$(date +%s); el() { echo "[$(( $(date +%s)-t0 )) s] $*"; }
left() { echo $(( 585 - ($(date +%s)-t0) )); }
timeout 200 tools/gpu_check.sh $O machine build > $O/stage_build.txt 2>&1; el "build rc=$?"; grep -E "error" $O/build.log | head; pack
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])')
export LD_LIBRARY_PATH=/opt/deps/usr/lib/x86_64-linux-gnu:$cudnn/lib GATI_CUDNN_PLANS=off
export GATI_FASHION_MNIST=/opt/deps/usr/share/datasets/fashion-mnist
B=build-gpu
timeout 120 $B/tests/test_backend_ops --gtest_filter='*cuda*:-*Convolutions*' > $O/backend_ops.log 2>&1; el "backend_ops rc=$?"; grep -E "^\[  (FAILED|PASSED) " $O/backend_ops.log; grep -B2 -A8 "Failure" $O/backend_ops.log | head -40; pack
timeout 200 $B/tests/test_cuda_backend > $O/cuda_backend.log 2>&1; el "cuda_backend rc=$?"; grep -E "^\[  (FAILED|PASSED) |^\[cuda" $O/cuda_backend.log; grep -B2 -A8 "Failure" $O/cuda_backend.log | head -40; pack
timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/test_backend_ops --gtest_filter='*Exit*cuda*' > $O/memcheck_exit_ops.log 2>&1; el "memcheck ops rc=$?"; grep -E "ERROR SUMMARY|^\[  (FAILED|PASSED) " $O/memcheck_exit_ops.log; grep -m3 -A12 "Invalid" $O/memcheck_exit_ops.log | head -30; pack
timeout 60 compute-sanitizer --tool racecheck --error-exitcode 9 $B/tests/test_backend_ops --gtest_filter='*Exit*cuda*' > $O/racecheck_exit_ops.log 2>&1; el "racecheck ops rc=$?"; grep -E "RACECHECK SUMMARY|ERROR SUMMARY|^\[  (FAILED|PASSED) " $O/racecheck_exit_ops.log; pack
timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/test_cuda_backend --gtest_filter='*BatchOne*:*ExitDecisions*:*Learner*' > $O/memcheck_cuda_backend.log 2>&1; el "memcheck backend rc=$?"; grep -E "ERROR SUMMARY|^\[  (FAILED|PASSED) " $O/memcheck_cuda_backend.log; grep -m3 -A12 "Invalid" $O/memcheck_cuda_backend.log | head -30; pack
l=$(( $(left) - 15 ))
[ $l -gt 30 ] && { (cd $B && timeout $l ctest -j16 --output-on-failure > $O/ctest.log 2>&1); el "ctest rc=$?"; grep -E "tests passed|\*\*\*Failed|Not Run|Timeout" $O/ctest.log | head -20; }; pack
