#!/usr/bin/env bash
# Session 2026-11-23, call 6: the wide exit head's pooling with 32 row lanes (1024 threads a block) instead of 8.
export PYTHONUNBUFFERED=1
O=/tmp/g6; mkdir -p $O
pack() { tar czf $OUT/g6.tgz --exclude='*.safetensors' -C /tmp g6; }
t0=$(date +%s); el() { echo "[$(( $(date +%s)-t0 )) s] $*"; }
timeout 100 tools/gpu_check.sh $O machine build > $O/stage_build.txt 2>&1; el "build rc=$?"; pack
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])')
export LD_LIBRARY_PATH=/opt/deps/usr/lib/x86_64-linux-gnu:$cudnn/lib GATI_CUDNN_PLANS=off
B=build-gpu
timeout 30 $B/tests/test_backend_ops --gtest_filter='*Exit*cuda*' > $O/exit_ops.log 2>&1; el "exit ops rc=$?"; grep -E "^\[  (FAILED|PASSED) " $O/exit_ops.log; pack
python3 tools/convert.py --arch resnet50 --random --seed 1 --out $O/r50.safetensors > /dev/null
timeout 60 $B/bench/bench_gpu --models=$O/r50.safetensors --batches=1 --exits --benchmark_filter='BM_ExitHead|paired' --benchmark_repetitions=3 --benchmark_report_aggregates_only=true --benchmark_out=$O/bench_exits.json --benchmark_out_format=json > $O/bench.log 2>&1; el "bench rc=$?"; grep -E "median" $O/bench.log; pack
