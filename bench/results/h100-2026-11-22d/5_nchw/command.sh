#!/usr/bin/env bash
# NCHW layout + legacy-vs-graph tuning: tests in both layouts, profiles, PyTorch side by side.
export PYTHONUNBUFFERED=1
O=/tmp/g11; mkdir -p $O
pack() { tar czf $OUT/g11.tgz --exclude='*.safetensors' -C /tmp g11; }
t0=$(date +%s); el() { echo "[$(( $(date +%s)-t0 )) s] $*"; }
timeout 200 tools/gpu_check.sh $O machine build > $O/stage_build.txt 2>&1; el build; tail -3 $O/stage_build.txt; pack
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])')
export LD_LIBRARY_PATH=/opt/deps/usr/lib/x86_64-linux-gnu:$cudnn/lib
B=build-gpu
timeout 120 $B/tests/test_backend_ops --gtest_filter='*cuda*' > $O/backend_ops.log 2>&1; el "backend_ops rc=$?"; grep -E "FAILED|PASSED|SKIPPED \]" $O/backend_ops.log | head -20; pack
timeout 150 $B/tests/test_cuda_backend > $O/cuda_backend.log 2>&1; el "cuda_backend nchw rc=$?"; grep -E "FAILED|PASSED|OK \]" $O/cuda_backend.log; pack
GATI_CUDA_LAYOUT=nhwc timeout 100 $B/tests/test_cuda_backend --gtest_filter='*WholeModel*:*ExitDecisions*:*Recorded*' > $O/cuda_backend_nhwc.log 2>&1; el "cuda_backend nhwc rc=$?"; grep -E "FAILED|PASSED" $O/cuda_backend_nhwc.log; pack
for a in resnet50 resnet18; do python3 tools/convert.py --arch $a --random --seed 1 --out $O/$a.safetensors > /dev/null; done
for ab in "resnet50 64" "resnet50 8" "resnet50 1" "resnet18 64"; do set -- $ab; f=$O/prof_$1_b$2.txt
  GATI_CUDNN_LOG=1 timeout 100 $B/gati profile --model $O/$1.safetensors --batch $2 --repeats 10 --device cuda --json $O/profile_$1_b$2.json > $f 2>&1
  el "$1 b$2: $(grep -E '^total' $f) | $(grep -o 'whole call.*median' $f)"; pack
done
left=$(( 560 - ($(date +%s)-t0) ))
[ $left -gt 60 ] && timeout $(( left - 10 )) python3 bench/compare_pytorch_gpu.py --bench $B/bench/bench_gpu --models resnet18 resnet50 demo --batches 1 8 64 --precisions fp32 --repeats 30 --no-compile --out $O/gpu_compare.json > $O/compare.log 2>&1; el compare; tail -16 $O/compare.log; pack
