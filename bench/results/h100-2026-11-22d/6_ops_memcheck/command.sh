#!/usr/bin/env bash
export PYTHONUNBUFFERED=1
O=/tmp/g12; mkdir -p $O
pack() { tar czf $OUT/g12.tgz --exclude='*.safetensors' -C /tmp g12; }
t0=$(date +%s); el() { echo "[$(( $(date +%s)-t0 )) s] $*"; }
timeout 150 tools/gpu_check.sh $O machine build > $O/stage_build.txt 2>&1; el build; tail -2 $O/stage_build.txt; pack
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])')
export LD_LIBRARY_PATH=/opt/deps/usr/lib/x86_64-linux-gnu:$cudnn/lib
B=build-gpu
timeout 120 $B/tests/test_backend_ops --gtest_filter='*/cuda:*/cuda_nhwc:-*Convolutions*/cuda' > $O/backend_ops.log 2>&1; el "backend_ops rc=$?"; grep -E "FAILED|PASSED" $O/backend_ops.log | head -20; pack
timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/test_cuda_backend --gtest_filter='*Recorded*' > $O/memcheck_graphs.log 2>&1; el "memcheck rc=$?"; tail -2 $O/memcheck_graphs.log; pack
