#!/usr/bin/env bash
# conv engine experiment: transforms, more candidates; PyTorch kernel list.
export PYTHONUNBUFFERED=1
O=/tmp/g8; mkdir -p $O
pack() { tar czf $OUT/g8.tgz --exclude='*.safetensors' -C /tmp g8; }
t0=$(date +%s); el() { echo "[$(( $(date +%s)-t0 )) s] $*"; }
timeout 200 tools/gpu_check.sh $O machine build > $O/stage_build.txt 2>&1; el build; tail -3 $O/stage_build.txt; pack
cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])')
export LD_LIBRARY_PATH=/opt/deps/usr/lib/x86_64-linux-gnu:$cudnn/lib
B=build-gpu
timeout 150 python3 .gpu-deps/torch_kernels.py > $O/torch_kernels.txt 2>&1; el torch_kernels; pack
for a in resnet50 resnet18; do python3 tools/convert.py --arch $a --random --seed 1 --out $O/$a.safetensors > /dev/null; done
for a in resnet50 resnet18; do for cfg in "T=0 C=6" "T=1 C=6" "T=0 C=40" "T=1 C=40"; do
  set -- $cfg; t=${1#T=}; c=${2#C=}
  GATI_CUDNN_LOG=1 GATI_CUDNN_TRANSFORMS=$t GATI_CUDNN_CANDIDATES=$c timeout 100 $B/gati profile --model $O/$a.safetensors --batch 64 --repeats 10 --device cuda > $O/prof_${a}_t${t}_c${c}.txt 2>&1
  el "$a t=$t c=$c: $(grep -E '^total' $O/prof_${a}_t${t}_c${c}.txt) | $(grep -o 'whole call.*median' $O/prof_${a}_t${t}_c${c}.txt)"
  pack
done; done
GATI_CUDNN_TRANSFORMS=1 GATI_CUDNN_CANDIDATES=40 timeout 120 $B/tests/test_cuda_backend --gtest_filter='*WholeModel*:*ExitDecisions*' > $O/parity_t1_c40.log 2>&1; el "parity t1 c40 rc=$?"; grep -E "FAILED|PASSED|max|differ" $O/parity_t1_c40.log | head; pack
