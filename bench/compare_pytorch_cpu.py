#!/usr/bin/python3
"""gati's CPU backend against PyTorch's best CPU configuration, in one run.

  bench/compare_pytorch_cpu.py --bench build/bench/bench_cpu [--threads 2] [--batches 1 8]
      [--models resnet18 resnet50 resnext50_32x4d demo] [--out bench/results/cpu_compare.json]

Makes random-weight models with tools/convert.py's writer (the demo model is
taken as it is) and times, on the same weights and with the same thread
count, three PyTorch configurations on torchvision's own model classes:
eager (contiguous), eager channels_last, and TorchScript frozen with
torch.jit.optimize_for_inference (oneDNN, batch norm folded, ReLU fused).
The three are timed interleaved (one run of each per round), so a slow
moment of a shared machine hits them alike.  gati's Google Benchmark suite
runs on the same file and batch right before and right after them, and its
time is the median over both halves: each ratio compares times taken within
the same minute or so.  ratio = gati / the fastest PyTorch configuration
(below 1.0: gati is faster).
"""
import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
import torch  # noqa: E402

import convert  # noqa: E402

CONFIGS = ["eager", "channels_last", "torchscript"]


def torchscript(model, x):
    """Frozen and optimised for inference; scripting first, tracing where scripting fails."""
    with torch.no_grad():
        try:
            scripted = torch.jit.script(model)
        except Exception:
            scripted = torch.jit.trace(model, x)
        return torch.jit.optimize_for_inference(scripted.eval())


def time_interleaved(runners, repeats, warmup):
    """Median ms per runner; each round runs every runner once."""
    times = {name: [] for name in runners}
    with torch.no_grad():
        for _ in range(warmup):
            for fn in runners.values():
                fn()
        for _ in range(repeats):
            for name, fn in runners.items():
                t = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t) * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def gati_times(bench, path, batch, repeats, threads):
    """[ms, ...] from one bench_cpu run of one model file at one batch."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([bench, "--models=" + path, "--batches=" + str(batch),
                          "--benchmark_filter=model/", f"--benchmark_repetitions={repeats}",
                          "--benchmark_min_time=0.05", "--benchmark_format=json"],
                         capture_output=True, text=True, env=env, check=True)
    return [b["real_time"] for b in json.loads(out.stdout)["benchmarks"] if b.get("run_type") == "iteration"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default=os.path.join(HERE, "..", "build", "bench", "bench_cpu"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "resnext50_32x4d", "demo"])
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="gati_bench_")
    paths = convert.benchmark_model_files(args.models, tmp, os.path.join(HERE, "..", "weights", "demo",
                                                                          "fmnist_resnet20.safetensors"))

    half = max(3, args.repeats // 2)
    rows = []
    for p in paths:
        model, arch = convert.read_model(p)
        for batch in args.batches:
            x = torch.randn(batch, arch["in_channels"], *arch["input_size"])
            mcl = copy.deepcopy(model).to(memory_format=torch.channels_last)  # .to() on a module is in place
            xcl = x.contiguous(memory_format=torch.channels_last)
            ts = torchscript(model, x)
            before = gati_times(args.bench, p, batch, half, args.threads)
            t = time_interleaved({"eager": lambda: model(x), "channels_last": lambda: mcl(xcl),
                                  "torchscript": lambda: ts(x)}, args.repeats, 3)
            after = gati_times(args.bench, p, batch, half, args.threads)
            rows.append({"model": arch["name"], "batch": batch, "torch_ms": t,
                         "gati_ms": statistics.median(before + after)})
            shown = ", ".join(f"{k} {v:.3f}" for k, v in t.items())
            print(f"pytorch {arch['name']} batch {batch}: {shown} ms", flush=True)

    print(f"\n{'model':<16} {'batch':>5} {'gati ms':>9} {'eager':>9} {'chan_last':>9} {'script':>9} {'ratio':>7}")
    for r in rows:
        best_cfg = min(CONFIGS, key=lambda c: r["torch_ms"][c])
        r["torch_best"] = best_cfg
        r["ratio_best"] = r["gati_ms"] / r["torch_ms"][best_cfg]
        t = r["torch_ms"]
        print(f"{r['model']:<16} {r['batch']:>5} {r['gati_ms']:>9.3f} {t['eager']:>9.3f} {t['channels_last']:>9.3f} "
              f"{t['torchscript']:>9.3f} {r['ratio_best']:>7.2f}")
    print("(float32, medians; script = TorchScript frozen + optimize_for_inference; "
          "ratio = gati / fastest PyTorch, below 1.0 is faster)")
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
        record = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads},
                  "torch": torch.__version__, "commit": commit, "repeats": args.repeats,
                  "command": " ".join(["bench/compare_pytorch_cpu.py"] + sys.argv[1:]), "results": rows}
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
