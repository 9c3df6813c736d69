#!/usr/bin/env bash
# Next GPU session, first command (fits 10 minutes): build, CUDA tests (the selector and chunked input included),
# memcheck of recorded graphs, compare with PyTorch (host-io rows), resnet50 b64 profile with the whole-call line.
export PYTHONUNBUFFERED=1
O=/tmp/g7; mkdir -p $O
pack() { tar czf $OUT/g7.tgz --exclude='*.safetensors' -C /tmp g7; }
t0=$(date +%s); el() { echo "[$(( $(date +%s)-t0 )) s] $*"; }
timeout 200 tools/gpu_check.sh $O machine build > $O/stage_build.txt 2>&1; el build; tail -3 $O/stage_build.txt; pack
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])')
export LD_LIBRARY_PATH=/opt/deps/usr/lib/x86_64-linux-gnu:$cudnn/lib
B=build-gpu
timeout 120 $B/tests/test_cuda_backend > $O/cuda_backend.log 2>&1; el "cuda_backend rc=$?"; grep -E "FAILED|PASSED" $O/cuda_backend.log
timeout 60 $B/tests/test_backend_ops --gtest_filter='*ExitHead*cuda*' > $O/exit_heads.log 2>&1; el "exit heads rc=$?"; grep -E "FAILED|PASSED" $O/exit_heads.log
timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/test_cuda_backend --gtest_filter='*Recorded*' > $O/memcheck_graphs.log 2>&1; el "memcheck rc=$?"; pack
python3 tools/convert.py --arch resnet50 --random --seed 1 --out $O/r50.safetensors > /dev/null
timeout 60 $B/gati profile --model $O/r50.safetensors --batch 64 --repeats 10 --device cuda --json $O/profile_resnet50_b64.json > $O/prof_r50_b64.txt 2>&1; tail -3 $O/prof_r50_b64.txt; pack
left=$(( 570 - ($(date +%s)-t0) ))
[ $left -gt 60 ] && timeout $(( left - 15 )) python3 bench/compare_pytorch_gpu.py --bench $B/bench/bench_gpu --models resnet18 resnet50 demo --batches 1 8 64 --precisions fp32 --repeats 30 --no-compile --out $O/gpu_compare.json > $O/compare.log 2>&1; el compare; tail -16 $O/compare.log; pack
