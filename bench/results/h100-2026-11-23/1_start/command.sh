#!/usr/bin/env bash
# Session 2026-11-23, call 1: build, the CUDA backend suite (learner, FP16, skip, plan cache never run on a GPU), CUDA op tests.
export PYTHONUNBUFFERED=1
O=/tmp/g1; mkdir -p $O
pack() { tar czf $OUT/g1.tgz --exclude='*.safetensors' -C /tmp g1; }
t0=$(date +%s); el() { echo "[$(( $(date +%s)-t0 )) s] $*"; }
timeout 330 tools/gpu_check.sh $O machine build > $O/stage_build.txt 2>&1; el "build rc=$?"; tail -5 $O/stage_build.txt; pack
grep -E "error|FAILED" $O/build.log | head -20
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])')
export LD_LIBRARY_PATH=/opt/deps/usr/lib/x86_64-linux-gnu:$cudnn/lib GATI_CUDNN_PLANS=off
export GATI_FASHION_MNIST=/opt/deps/usr/share/datasets/fashion-mnist
B=build-gpu
left() { echo $(( 580 - ($(date +%s)-t0) )); }
timeout $(( $(left) < 200 ? $(left) : 200 )) $B/tests/test_cuda_backend > $O/cuda_backend.log 2>&1; el "cuda_backend rc=$?"; grep -E "^\[  (FAILED|PASSED|SKIPPED|     OK) " $O/cuda_backend.log; grep -B2 -A8 "Failure" $O/cuda_backend.log | head -60; pack
timeout $(( $(left) - 10 )) $B/tests/test_backend_ops --gtest_filter='*cuda*:-*Convolutions*' > $O/backend_ops.log 2>&1; el "backend_ops rc=$?"; grep -E "^\[  (FAILED|PASSED) " $O/backend_ops.log; grep -B2 -A8 "Failure" $O/backend_ops.log | head -60; pack
