#!/usr/bin/env bash
# layout experiment: NCHW strides for cuDNN (timings only)
export PYTHONUNBUFFERED=1
O=/tmp/g9; mkdir -p $O
pack() { tar czf $OUT/g9.tgz --exclude='*.safetensors' -C /tmp g9; }
t0=$(date +%s); el() { echo "[$(( $(date +%s)-t0 )) s] $*"; }
timeout 200 tools/gpu_check.sh $O machine build > $O/stage_build.txt 2>&1; el build; tail -3 $O/stage_build.txt; pack
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])')
export LD_LIBRARY_PATH=/opt/deps/usr/lib/x86_64-linux-gnu:$cudnn/lib
B=build-gpu
for a in resnet50 resnet18; do python3 tools/convert.py --arch $a --random --seed 1 --out $O/$a.safetensors > /dev/null; done
for a in resnet50 resnet18; do for b in 64 8 1; do for cfg in "L=nhwc T=1 C=40" "L=nchw T=0 C=6" "L=nchw T=1 C=40"; do
  set -- $cfg; l=${1#L=}; t=${2#T=}; c=${3#C=}
  f=$O/prof_${a}_b${b}_${l}_t${t}_c${c}.txt
  GATI_CUDNN_LAYOUT=$l GATI_CUDNN_LOG=1 GATI_CUDNN_TRANSFORMS=$t GATI_CUDNN_CANDIDATES=$c timeout 100 $B/gati profile --model $O/$a.safetensors --batch $b --repeats 10 --device cuda > $f 2>&1
  el "$a b$b $l t=$t c=$c: $(grep -E '^total' $f) | $(grep -o 'whole call.*median' $f)"
  pack
done; done; done
