#!/usr/bin/env bash
# Session 2026-11-23 (fourteenth), call 4: build; PyTorch's configurations and gati side by side, resnet50 at batch 1, 8, 256 in FP16 and FP32.
export PYTHONUNBUFFERED=1
O=/tmp/g10; mkdir -p $O
pack() { tar czf $OUT/g10.tgz --exclude='*.safetensors' -C /tmp g10; }
t0=$(date +%s); el() { echo "[$(( $(date +%s)-t0 )) s] $*"; }
left() { echo $(( 330 - ($(date +%s)-t0) )); }
timeout 150 tools/gpu_check.sh $O machine build > $O/stage_build.txt 2>&1; el "build rc=$?"; pack
GATI_COMPARE_ARGS="--no-compile" timeout $(left) python3 bench/compare_pytorch_gpu.py --bench build-gpu/bench/bench_gpu --models resnet50 \
  --batches 1 256 --precisions fp16 fp32 --repeats 20 --no-compile --out $O/gpu_compare.json > $O/compare.log 2>&1; el "compare rc=$?"; tail -20 $O/compare.log; pack
