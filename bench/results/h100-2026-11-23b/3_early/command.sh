#!/usr/bin/env bash
# Session 2026-11-23 (fourteenth), call 3: build; early exits where they matter (issue 10 item 4): CIFAR-stem ResNet-18 then
# ResNet-50 trained on Fashion-MNIST here, caches, uniform and locality traces at batch 1 on the GPU.
export PYTHONUNBUFFERED=1
O=/tmp/g9; mkdir -p $O
pack() { tar czf $OUT/g9.tgz --exclude='*.safetensors' -C /tmp g9; }
t0=$(date +%s); el() { echo "[$(( $(date +%s)-t0 )) s] $*"; }
left() { echo $(( 585 - ($(date +%s)-t0) )); }
timeout 200 tools/gpu_check.sh $O machine build > $O/stage_build.txt 2>&1; el "build rc=$?"; grep -E "error" $O/build.log | head; pack
GATI_EARLY_MODELS=cifar_resnet18 timeout $(( $(left) - 20 )) tools/gpu_check.sh $O early > $O/stage_early18.txt 2>&1; el "early r18 rc=$?"; tail -12 $O/stage_early18.txt; tail -5 $O/early.log; pack
l=$(( $(left) - 10 ))
[ $l -gt 120 ] && { cp $O/early.log $O/early18.log; GATI_EARLY_MODELS=cifar_resnet50 GATI_EARLY_EPOCHS=2 timeout $l tools/gpu_check.sh $O early > $O/stage_early50.txt 2>&1; el "early r50 rc=$?"; tail -12 $O/stage_early50.txt; tail -5 $O/early.log; }; pack
