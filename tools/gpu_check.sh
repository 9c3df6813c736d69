#!/usr/bin/env bash
# Everything that needs a GPU, in one command, on a bare GPU machine:
#
#   tools/gpu_check.sh OUT [stage ...]
#
# stages (default: all, in this order)
#   machine   GPU, driver, nvcc, PyTorch, cuDNN, commit -> OUT/machine.json
#   build     Release build with the CUDA backend into build-gpu/
#   test      the GPU suites (backend ops, CUDA backend, parity on CUDA), then all of ctest
#   sanitize  compute-sanitizer memcheck and racecheck over the GPU test binaries
#   run       the demo model on Fashion-MNIST (CPU and CUDA, with and without caches)
#             and a converted random-weight resnet50 through infer/profile on the GPU
#   bench     bench_gpu (models, exits, exit-point ops) as JSON
#   graphs    whole-model latency with CUDA graphs and without (GATI_CUDA_GRAPHS=0), side by side
#   exits     the exit head alone and the never-hit paired benchmark for each GATI_CUDA_EXIT_KERNEL
#             (block, wide, staged) -> OUT/exit_kernels.json
#   early     early exits where they matter: CIFAR-stem ResNets trained on Fashion-MNIST here
#             (tools/train.py, GATI_EARLY_MODELS, default cifar_resnet18 cifar_resnet50;
#             GATI_EARLY_EPOCHS, default 4), caches with gati cache build's defaults (plus
#             GATI_EARLY_CACHE_ARGS), uniform and
#             locality traces at batch 1 on the GPU -> OUT/early_exits.json (not in the default
#             list: a model's training takes minutes; run it in its own call per model)
#   compare   bench/compare_pytorch_gpu.py: PyTorch's configurations and gati, one run
#
# The machine needs the CUDA toolkit, CMake and PyTorch with CUDA (the
# `python3` on PATH, or GATI_PYTHON); cuDNN is taken from PyTorch's
# nvidia.cudnn package unless GATI_CUDNN_ROOT says otherwise.  Our Debian
# packages come as .deb files in .gpu-deps/ (see the README), unpacked once
# into GATI_DEPS_PREFIX (default /opt/deps).  Logs and JSON go to OUT; each
# stage's status is in OUT/summary.json; the exit status is non-zero when a
# stage failed.  Stages can run in separate calls (the device tool limits a
# command to 10 minutes): build once, then test, sanitize, ... in turn.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${1:?usage: tools/gpu_check.sh OUT [machine build test sanitize run bench graphs exits early compare]}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(machine build test sanitize run bench graphs exits compare)
py=${GATI_PYTHON:-python3}
deps=${GATI_DEPS_PREFIX:-/opt/deps}
build=${GATI_GPU_BUILD:-build-gpu}
jobs=${GATI_JOBS:-$(nproc)}

# ---- environment ----------------------------------------------------------------
if [ -d .gpu-deps ] && [ ! -f "$deps/.unpacked" ]; then
  echo "== unpacking .gpu-deps/*.deb into $deps"
  mkdir -p "$deps"
  for f in .gpu-deps/*.deb; do dpkg -x "$f" "$deps"; done
  touch "$deps/.unpacked"
fi
# nvidia.cudnn is a namespace package in recent wheels (no __file__): take its __path__.
cudnn=${GATI_CUDNN_ROOT:-$("$py" -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null)}
export LD_LIBRARY_PATH="$deps/usr/lib/x86_64-linux-gnu:${cudnn:+$cudnn/lib:}${LD_LIBRARY_PATH:-}"
export GATI_FASHION_MNIST=${GATI_FASHION_MNIST:-$deps/usr/share/datasets/fashion-mnist}
[ -d "$GATI_FASHION_MNIST" ] || GATI_FASHION_MNIST=/usr/share/datasets/fashion-mnist
commit=${GATI_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export GATI_COMMIT=$commit
gati=$build/gati
demo=weights/demo/fmnist_resnet20.safetensors

summary="$out/summary.json"
[ -f "$summary" ] || echo '{}' >"$summary"
failed=0
# step NAME CMD...: runs CMD with its output in OUT/NAME.log, records the status.
step() {
  local name=$1 start st
  shift
  echo "== $name"
  start=$(date +%s)
  if "$@" >"$out/$name.log" 2>&1; then st=ok; else st="failed (exit $?)"; failed=1; fi
  echo "   $st in $(($(date +%s) - start)) s; log $out/$name.log"
  tail -n 4 "$out/$name.log" | sed 's/^/   | /'
  "$py" - "$summary" "$name" "$st" <<'EOF'
import json, sys
path, name, status = sys.argv[1:]
d = json.load(open(path))
d[name] = status
json.dump(d, open(path, "w"), indent=2)
EOF
}

machine() {
  nvidia-smi && nvcc --version && "$py" - "$out/machine.json" "$commit" "$cudnn" <<'EOF' &&
import json, subprocess, sys
out, commit, cudnn_root = sys.argv[1:]
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                      "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
rec = {"nvidia_smi": smi, "nvcc": nvcc, "commit": commit, "cudnn_root": cudnn_root}
try:
    import torch
    rec.update(torch=torch.__version__, torch_cuda=torch.version.cuda, torch_cudnn=torch.backends.cudnn.version(),
               gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
except Exception as e:
    rec["torch"] = f"unavailable: {e}"
try:
    import torchvision
    rec["torchvision"] = torchvision.__version__
except Exception:
    rec["torchvision"] = None
hdr = f"{cudnn_root}/include/cudnn_version.h"
try:
    v = {l.split()[1]: l.split()[2] for l in open(hdr) if l.startswith("#define CUDNN_") and len(l.split()) == 3}
    rec["cudnn_headers"] = f"{v.get('CUDNN_MAJOR')}.{v.get('CUDNN_MINOR')}.{v.get('CUDNN_PATCHLEVEL')}"
except OSError:
    rec["cudnn_headers"] = None
json.dump(rec, open(out, "w"), indent=2)
print(json.dumps(rec, indent=2))
EOF
    { test -f "$deps/usr/include/zlib.h" || test -f /usr/include/zlib.h || { echo "zlib.h not found"; false; }; }
}

configure_and_build() {
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DGATI_CUDA=ON -DGATI_CUDNN_ROOT="$cudnn" \
    -DCMAKE_CUDA_ARCHITECTURES="${GATI_CUDA_ARCHS:-90}" -DCMAKE_PREFIX_PATH="$deps/usr" \
    -DGATI_PYTHON="$(command -v "$py")" &&
    cmake --build "$build" -j "$jobs" -- $([ ${#gen[@]} -gt 0 ] && echo -k 0) &&
    grep -E 'GATI_CUDNN_(INCLUDE|LIBRARY)' "$build/CMakeCache.txt"
}

gpu_tests() {
  GATI_CUDNN_PLANS=off "$build/tests/test_backend_ops" --gtest_filter='*cuda*' &&
    GATI_CUDNN_PLANS=off "$build/tests/test_cuda_backend"
}

# ctest without the GPU suites gpu_tests has just run (the parity on CUDA stays).
all_tests() { (cd "$build" && ctest --output-on-failure -j "$jobs" --timeout 900 -E '/cuda(_nhwc|_fp16)?$|^CudaBackend[.]'); }

sanitize() {
  local tool rc=0
  # racecheck and synccheck look at shared memory and barriers, which only
  # our kernels use: the convolution test (cuDNN's kernels, and a minute of
  # plan building per tool) runs under memcheck only.
  local filter
  for tool in memcheck racecheck synccheck; do
    filter='*cuda*'
    [ "$tool" = memcheck ] || filter='*cuda*:-*Convolutions*'
    echo "---- $tool: test_backend_ops ($filter)"
    compute-sanitizer --tool "$tool" --error-exitcode 9 "$build/tests/test_backend_ops" --gtest_filter="$filter" || rc=1
  done
  echo "---- memcheck: test_cuda_backend"
  compute-sanitizer --tool memcheck --error-exitcode 9 "$build/tests/test_cuda_backend" || rc=1
  return $rc
}

run_models() {
  local r50="$out/resnet50_random.safetensors" input="$out/resnet50_input.safetensors"
  "$gati" devices &&
    "$gati" run --model "$demo" --data fashion-mnist --limit 2000 --device cpu --json "$out/demo_run_cpu.json" &&
    "$gati" run --model "$demo" --data fashion-mnist --limit 2000 --device cuda --json "$out/demo_run_cuda.json" &&
    "$gati" cache build --model "$demo" --data fashion-mnist --train 5000 --holdout 2000 --epochs 3 \
      --out "$out/demo_caches.safetensors" --device cuda &&
    "$gati" run --model "$demo" --data fashion-mnist --limit 2000 --caches "$out/demo_caches.safetensors" --device cpu \
      --batch 8 --json "$out/demo_caches_cpu.json" &&
    "$gati" run --model "$demo" --data fashion-mnist --limit 2000 --caches "$out/demo_caches.safetensors" --device cuda \
      --batch 8 --json "$out/demo_caches_cuda.json" &&
    for where in sgd sgd-backend; do  # online SGD on the host pass, and in the CUDA backend (engine/learner.h)
      "$gati" serve-sim --model "$demo" --caches "$out/demo_caches.safetensors" --trace uniform --seed 5151 \
        --requests 2000 --online $where --device cuda --json "$out/serve_online_${where}_cuda.json" || return 1
    done &&
    "$py" tools/convert.py --arch resnet50 --random --seed 1 --out "$r50" &&
    "$py" - "$input" <<'EOF' &&
import sys, torch
sys.path.insert(0, "tools")
import safetensors_io
safetensors_io.save(sys.argv[1], {"input": torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(5))})
EOF
    "$gati" infer --model "$r50" --input "$input" --output "$out/resnet50_logits_cuda.safetensors" --device cuda &&
    "$gati" infer --model "$r50" --input "$input" --output "$out/resnet50_logits_cpu.safetensors" --device cpu &&
    "$py" - "$r50" "$input" "$out" <<'EOF' &&
import json, sys, torch
sys.path.insert(0, "tools")
import gati_models, safetensors_io
model_path, input_path, out = sys.argv[1:]
tensors, meta = safetensors_io.load(model_path)
model = gati_models.build_reference(json.loads(meta["gati.arch"]))
model.load_state_dict(tensors, strict=False)
x = safetensors_io.load(input_path)[0]["input"]
rec = {}
with torch.no_grad():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    want = model.cuda().eval()(x.cuda()).cpu()
for dev in ("cuda", "cpu"):
    got = safetensors_io.load(f"{out}/resnet50_logits_{dev}.safetensors")[0]["logits"]
    rec[dev] = float((got - want).abs().max() / want.abs().max())
    print(f"resnet50 gati {dev} vs PyTorch on the GPU: max error / max |ref| = {rec[dev]:.2e}")
json.dump(rec, open(f"{out}/resnet50_parity.json", "w"), indent=2)
assert max(rec.values()) <= 1e-4, rec
EOF
    for b in 1 8 64; do  # the profile's last line: the whole call against its layers (the host gap)
      "$gati" profile --model "$r50" --batch $b --repeats 50 --device cuda --json "$out/profile_resnet50_b$b.json" \
        --trace "$out/profile_resnet50_b$b.trace.json" || return 1
    done &&
    "$gati" profile --model "$demo" --batch 1 --repeats 100 --device cuda --json "$out/profile_demo_b1.json" \
      --trace "$out/profile_demo_b1.trace.json"
}

bench() {
  local r50="$out/resnet50_random.safetensors"
  [ -f "$r50" ] || "$py" tools/convert.py --arch resnet50 --random --seed 1 --out "$r50" || return 1
  "$build/bench/bench_gpu" --models="$demo,$r50" --batches=1,8,64 --exits --benchmark_repetitions=5 \
    --benchmark_report_aggregates_only=true --benchmark_out="$out/bench_gpu.json" --benchmark_out_format=json
}

# The same model benchmarks with recorded CUDA graphs and with every op
# launched one by one; graphs_ab.json holds both medians and their ratio.
graphs_ab() {
  local r50="$out/resnet50_random.safetensors" g
  [ -f "$r50" ] || "$py" tools/convert.py --arch resnet50 --random --seed 1 --out "$r50" || return 1
  for g in 1 0; do
    GATI_CUDA_GRAPHS=$g "$build/bench/bench_gpu" --models="$demo,$r50" --batches=1,8,64 --benchmark_filter='^model/' \
      --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
      --benchmark_out="$out/bench_graphs$g.json" --benchmark_out_format=json || return 1
  done
  "$py" - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
med = {}
for g in ("1", "0"):
    for b in json.load(open(f"{out}/bench_graphs{g}.json"))["benchmarks"]:
        if b.get("aggregate_name") == "median":
            med.setdefault(b["run_name"], {})[g] = b["real_time"]
rows = {k: {"graphs_ms": v["1"], "direct_ms": v["0"], "graphs_over_direct": v["1"] / v["0"]}
        for k, v in med.items() if "1" in v and "0" in v}
for k, r in rows.items():
    print(f"{k:40s} graphs {r['graphs_ms']:8.3f} ms  direct {r['direct_ms']:8.3f} ms  ratio {r['graphs_over_direct']:.2f}")
json.dump(rows, open(f"{out}/graphs_ab.json", "w"), indent=2)
EOF
}

# The exit head's kernels (kernels/cuda/exit_head.cu) side by side: one head
# alone (us) and the never-hit overhead of the whole model (%), per kernel.
exit_kernels() {
  local r50="$out/resnet50_random.safetensors" k
  [ -f "$r50" ] || "$py" tools/convert.py --arch resnet50 --random --seed 1 --out "$r50" || return 1
  for k in block wide staged; do
    GATI_CUDA_EXIT_KERNEL=$k "$build/bench/bench_gpu" --models="$demo,$r50" --batches=1,8 --exits \
      --benchmark_filter='BM_ExitHead|paired' --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
      --benchmark_out="$out/bench_exits_$k.json" --benchmark_out_format=json || return 1
  done
  "$py" - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
rows = {}
for k in ("block", "wide", "staged"):
    for b in json.load(open(f"{out}/bench_exits_{k}.json"))["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        v = b["overhead_%"] if "overhead_%" in b else b["real_time"]
        rows.setdefault(b["run_name"], {})[k] = v
for name, r in rows.items():
    print(f"{name:60s} " + "  ".join(f"{k} {r.get(k, float('nan')):9.2f}" for k in ("block", "wide", "staged")))
json.dump(rows, open(f"{out}/exit_kernels.json", "w"), indent=2)
EOF
}

early_exits() {
  local m model caches tr
  for m in ${GATI_EARLY_MODELS:-cifar_resnet18 cifar_resnet50}; do
    model="$out/fmnist_$m.safetensors"
    caches="$out/fmnist_${m}_caches.safetensors"
    [ -f "$model" ] || "$py" tools/train.py --arch "$m" --epochs "${GATI_EARLY_EPOCHS:-4}" \
      --data "$GATI_FASHION_MNIST" --out "$model" || return 1
    # GATI_EARLY_CACHE_ARGS: extra cache build flags (e.g. "--epochs 4 --train 20000"): fitting a
    # ResNet-50's 17 heads with the defaults does not fit in one 10-minute call with its training.
    # shellcheck disable=SC2086
    [ -f "$caches" ] || "$gati" cache build --model "$model" --data fashion-mnist --out "$caches" --device cuda \
      ${GATI_EARLY_CACHE_ARGS:-} || return 1
    for tr in uniform locality; do
      "$gati" serve-sim --model "$model" --caches "$caches" --trace $tr --seed 2468 --requests 4000 \
        --device cuda --json "$out/early_${m}_$tr.json" || return 1
    done
  done
  "$py" - "$out" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
rows = []
for f in sorted(glob.glob(f"{out}/early_*_*.json")):
    d = json.load(open(f))
    name = os.path.basename(f)[len("early_"):-len(".json")]
    rows.append({"run": name, "agreement": d["agreement"], "hit_rate": d["hit_rate"],
                 "latency_speedup": d["speedup_mean"], "compute_speedup": d["speedup_compute"],
                 "latency_ms": d["latency_ms"]})
    print(f"{name:32s} agreement {d['agreement']:.4f} hit rate {d['hit_rate']:.3f} "
          f"latency {d['speedup_mean']:.2f}x compute {d['speedup_compute']:.2f}x")
json.dump(rows, open(f"{out}/early_exits.json", "w"), indent=2)
EOF
}

compare() {
  "$py" bench/compare_pytorch_gpu.py --bench "$build/bench/bench_gpu" --models resnet18 resnet50 demo \
    --batches 1 8 64 --precisions fp32 fp16 --repeats 30 ${GATI_COMPARE_ARGS:---no-compile} \
    --out "$out/gpu_compare.json"
}

for s in "${stages[@]}"; do
  case $s in
    machine) step machine machine ;;
    build) step build configure_and_build ;;
    test) step gpu_tests gpu_tests; step ctest all_tests ;;
    sanitize) step sanitize sanitize ;;
    run) step run run_models ;;
    bench) step bench bench ;;
    graphs) step graphs graphs_ab ;;
    exits) step exits exit_kernels ;;
    early) step early early_exits ;;
    compare) step compare compare ;;
    *) echo "unknown stage '$s' (valid: machine build test sanitize run bench graphs exits early compare)"; exit 2 ;;
  esac
done
echo "== summary ($summary)"
cat "$summary"
exit $failed
