#!/usr/bin/env bash
# Session 2026-11-23, call 5: the wide exit head (three launches across the GPU) against the one-block kernel bit for bit,
# the exit tests of the CUDA backend with it, memcheck, and the exit benchmarks (one head alone; never-hit paired).
export PYTHONUNBUFFERED=1
O=/tmp/g5; mkdir -p $O
pack() { tar czf $OUT/g5.tgz --exclude='*.safetensors' -C /tmp g5; }
t0=$(date +%s); el() { echo "[$(( $(date +%s)-t0 )) s] $*"; }
timeout 150 tools/gpu_check.sh $O machine build > $O/stage_build.txt 2>&1; el "build rc=$?"; grep -E "error" $O/build.log | head; pack
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])')
export LD_LIBRARY_PATH=/opt/deps/usr/lib/x86_64-linux-gnu:$cudnn/lib GATI_CUDNN_PLANS=off
B=build-gpu
timeout 40 $B/tests/test_backend_ops --gtest_filter='*Exit*cuda*' > $O/exit_ops.log 2>&1; el "exit ops rc=$?"; grep -E "^\[  (FAILED|PASSED) " $O/exit_ops.log; grep -A5 Failure $O/exit_ops.log | head -20; pack
timeout 80 $B/tests/test_cuda_backend --gtest_filter='*Exit*:*Learner*:*Recorded*:*BatchOne*:*Threads*' > $O/cuda_backend.log 2>&1; el "cuda_backend rc=$?"; grep -E "^\[  (FAILED|PASSED) |^\[cuda" $O/cuda_backend.log; grep -A5 Failure $O/cuda_backend.log | head -20; pack
timeout 40 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/test_backend_ops --gtest_filter='*Exit*cuda*' > $O/memcheck_exit_ops.log 2>&1; el "memcheck rc=$?"; grep -E "ERROR SUMMARY|^\[  (FAILED|PASSED) " $O/memcheck_exit_ops.log; pack
python3 tools/convert.py --arch resnet50 --random --seed 1 --out $O/r50.safetensors > /dev/null
left=$(( 380 - ($(date +%s)-t0) ))
[ $left -gt 30 ] && timeout $left $B/bench/bench_gpu --models=weights/demo/fmnist_resnet20.safetensors,$O/r50.safetensors --batches=1,8 --exits --benchmark_filter='BM_ExitHead|paired' --benchmark_repetitions=3 --benchmark_report_aggregates_only=true --benchmark_out=$O/bench_exits.json --benchmark_out_format=json > $O/bench.log 2>&1; el "bench rc=$?"; grep -E "median" $O/bench.log; pack
