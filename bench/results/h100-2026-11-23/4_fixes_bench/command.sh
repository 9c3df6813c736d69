#!/usr/bin/env bash
# Session 2026-11-23, call 4: build; CUDA backend suite (mixing heads, plan cache at batch 4); memcheck (selector fix,
# backend suite); parity FP16 with the per-convolution bound; bench_gpu (models, exits, ops) with what time is left.
export PYTHONUNBUFFERED=1
O=/tmp/g4; mkdir -p $O
pack() { tar czf $OUT/g4.tgz --exclude='*.safetensors' -C /tmp g4; }
t0=$(date +%s); el() { echo "[$(( $(date +%s)-t0 )) s] $*"; }
timeout 200 tools/gpu_check.sh $O machine build > $O/stage_build.txt 2>&1; el "build rc=$?"; grep -E "error" $O/build.log | head; pack
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])')
export LD_LIBRARY_PATH=/opt/deps/usr/lib/x86_64-linux-gnu:$cudnn/lib GATI_CUDNN_PLANS=off
B=build-gpu
timeout 150 $B/tests/test_cuda_backend > $O/cuda_backend.log 2>&1; el "cuda_backend rc=$?"; grep -E "^\[  (FAILED|PASSED) |^\[cuda" $O/cuda_backend.log; grep -A6 "Failure" $O/cuda_backend.log | head -30; pack
timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/test_backend_ops --gtest_filter='*cuda*:-*Convolutions*' > $O/memcheck_backend_ops.log 2>&1; el "memcheck ops rc=$?"; grep -E "ERROR SUMMARY|^\[  (FAILED|PASSED) " $O/memcheck_backend_ops.log; pack
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/test_cuda_backend --gtest_filter='*Exit*:*Learner*:*Recorded*:*BatchOne*:*PlanCache*' > $O/memcheck_cuda_backend.log 2>&1; el "memcheck backend rc=$?"; grep -E "ERROR SUMMARY|^\[  (FAILED|PASSED) " $O/memcheck_cuda_backend.log; pack
(cd $B && timeout 150 ctest -R "make_references|Parity.*Fp16" --output-on-failure > $O/parity.log 2>&1); el "parity fp16 rc=$?"; grep -E "tests passed|Failed|Failure|bound" $O/parity.log | head -40; pack
left=$(( 575 - ($(date +%s)-t0) ))
python3 tools/convert.py --arch resnet50 --random --seed 1 --out $O/resnet50_random.safetensors > /dev/null
[ $left -gt 60 ] && timeout $(( left - 20 )) $B/bench/bench_gpu --models=weights/demo/fmnist_resnet20.safetensors,$O/resnet50_random.safetensors --batches=1,8,64 --exits --benchmark_repetitions=5 --benchmark_report_aggregates_only=true --benchmark_out=$O/bench_gpu.json --benchmark_out_format=json > $O/bench.log 2>&1; el "bench rc=$?"; grep -E "median" $O/bench.log | head -60; pack
