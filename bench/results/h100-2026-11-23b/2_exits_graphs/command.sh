#!/usr/bin/env bash
# Session 2026-11-23 (fourteenth), call 2: build; the exit kernels side by side (block, wide, staged: one head, never-hit paired);
# whole-model latency with and without CUDA graphs.
export PYTHONUNBUFFERED=1
O=/tmp/g8; mkdir -p $O
pack() { tar czf $OUT/g8.tgz --exclude='*.safetensors' -C /tmp g8; }
t0=$(date +%s); el() { echo "[$(( $(date +%s)-t0 )) s] $*"; }
left() { echo $(( 585 - ($(date +%s)-t0) )); }
timeout 200 tools/gpu_check.sh $O machine build > $O/stage_build.txt 2>&1; el "build rc=$?"; grep -E "error" $O/build.log | head; pack
timeout $(( $(left) - 150 )) tools/gpu_check.sh $O exits > $O/stage_exits.txt 2>&1; el "exits rc=$?"; cat $O/stage_exits.txt | tail -30; pack
l=$(( $(left) - 10 ))
[ $l -gt 40 ] && { timeout $l tools/gpu_check.sh $O graphs > $O/stage_graphs.txt 2>&1; el "graphs rc=$?"; tail -20 $O/graphs.log; }; pack
