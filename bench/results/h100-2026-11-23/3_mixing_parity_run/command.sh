#!/usr/bin/env bash
# Session 2026-11-23, call 3: build with -lineinfo; memcheck the selector head (line of the shared read); the CUDA backend
# suite with mixing thresholds; parity with PyTorch on CUDA (FP32, FP16); the run stage (demo, caches, online SGD, r50).
export PYTHONUNBUFFERED=1
O=/tmp/g3; mkdir -p $O
pack() { tar czf $OUT/g3.tgz --exclude='*.safetensors' -C /tmp g3; }
t0=$(date +%s); el() { echo "[$(( $(date +%s)-t0 )) s] $*"; }
export CUDAFLAGS=-lineinfo
timeout 200 tools/gpu_check.sh $O machine build > $O/stage_build.txt 2>&1; el "build rc=$?"; grep -E "error" $O/build.log | head; pack
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])')
export LD_LIBRARY_PATH=/opt/deps/usr/lib/x86_64-linux-gnu:$cudnn/lib GATI_CUDNN_PLANS=off
B=build-gpu
timeout 60 compute-sanitizer --tool memcheck --print-limit 3 $B/tests/test_backend_ops --gtest_filter='*ExitHeadWithASelector/cuda' > $O/memcheck_selector.log 2>&1; el "memcheck selector rc=$?"; grep -E "ERROR SUMMARY|Invalid|exit_head|\.cu[h]?:[0-9]+" $O/memcheck_selector.log | head -12
cuobjdump -sass -fun '_ZN4gati4cuda45_GLOBAL__N__' $B/tests/test_backend_ops > /dev/null 2>&1
cuobjdump -sass $B/tests/test_backend_ops 2>/dev/null | awk '/Function : .*exit_head_kernelIfE/{p=1} p&&/Function : /&&!/exit_head_kernelIfE/{p=0} p' > $O/exit_head_float.sass; el "sass lines $(wc -l < $O/exit_head_float.sass)"; pack
timeout 200 $B/tests/test_cuda_backend > $O/cuda_backend.log 2>&1; el "cuda_backend rc=$?"; grep -E "^\[  (FAILED|PASSED) |^\[cuda" $O/cuda_backend.log; grep -A6 "Failure" $O/cuda_backend.log | head -40; pack
(cd $B && timeout 240 ctest -R "make_references|Parity" --output-on-failure > $O/parity.log 2>&1); el "parity rc=$?"; grep -E "tests passed|Passed|Failed|\*\*\*" $O/parity.log | head; pack
left=$(( 570 - ($(date +%s)-t0) ))
[ $left -gt 60 ] && { timeout $left tools/gpu_check.sh $O run > $O/stage_run.txt 2>&1; el "run rc=$?"; tail -8 $O/run.log; }; pack
