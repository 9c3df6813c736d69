#!/usr/bin/env bash
# layout experiment, legacy API with cudnnFind (PyTorch's cudnn.benchmark path)
export PYTHONUNBUFFERED=1
O=/tmp/g10; mkdir -p $O
pack() { tar czf $OUT/g10.tgz --exclude='*.safetensors' -C /tmp g10; }
t0=$(date +%s); el() { echo "[$(( $(date +%s)-t0 )) s] $*"; }
timeout 200 tools/gpu_check.sh $O machine build > $O/stage_build.txt 2>&1; el build; tail -3 $O/stage_build.txt; pack
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])')
export LD_LIBRARY_PATH=/opt/deps/usr/lib/x86_64-linux-gnu:$cudnn/lib
B=build-gpu
for a in resnet50 resnet18; do python3 tools/convert.py --arch $a --random --seed 1 --out $O/$a.safetensors > /dev/null; done
for ab in "resnet50 64" "resnet50 8" "resnet50 1" "resnet18 64"; do set -- $ab; a=$1; b=$2; for l in nhwc nchw; do for t in 0 1; do
  f=$O/prof_${a}_b${b}_legacy_${l}_t${t}.txt
  GATI_CUDNN_API=legacy GATI_CUDNN_FIND=1 GATI_CUDNN_LAYOUT=$l GATI_CUDNN_LOG=1 GATI_CUDNN_TRANSFORMS=$t timeout 100 $B/gati profile --model $O/$a.safetensors --batch $b --repeats 10 --device cuda > $f 2>&1
  el "$a b$b legacy $l t=$t: $(grep -E '^total' $f) | $(grep -o 'whole call.*median' $f)"
  pack
done; done; done
