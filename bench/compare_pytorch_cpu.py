#!/usr/bin/python3
"""gati's CPU backend against PyTorch on the same CPU, in one run.

  bench/compare_pytorch_cpu.py --bench build/bench/bench_cpu [--threads 2] [--out bench/results/cpu.json]

Makes random-weight resnet18 and resnet50 (224x224) with tools/convert.py's
writer, takes the demo model as it is, times PyTorch eager (float32,
contiguous and channels_last, torch.no_grad, the same thread count) and then
gati's Google Benchmark suite on the same files, and prints medians and the
ratio gati / PyTorch-best (below 1.0 means gati is faster).
"""
import argparse
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
import gati_models  # noqa: E402
import safetensors_io  # noqa: E402


def torch_model(path):
    tensors, meta = safetensors_io.load(path)
    arch = json.loads(meta["gati.arch"])
    model = gati_models.build_reference(arch)
    model.load_state_dict(tensors, strict=False)
    return model.eval(), arch


def time_torch(model, x, repeats, warmup):
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default=os.path.join(HERE, "..", "build", "bench", "bench_cpu"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "demo"])
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="gati_bench_")
    paths = []
    for name in args.models:
        if name == "demo":
            paths.append(os.path.join(HERE, "..", "weights", "demo", "fmnist_resnet20.safetensors"))
            continue
        arch = gati_models.arch_for(name)
        model = gati_models.randomize_(gati_models.build_reference(arch), seed=1)
        p = os.path.join(tmp, f"{name}.safetensors")
        convert.write_model(arch, model.state_dict(), p)
        paths.append(p)

    rows = []
    for p in paths:
        model, arch = torch_model(p)
        x = torch.randn(1, arch["in_channels"], *arch["input_size"])
        eager = time_torch(model, x, args.repeats, 3)
        cl = time_torch(model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last),
                        args.repeats, 3)
        rows.append({"model": arch["name"], "path": p, "torch_eager_ms": eager, "torch_channels_last_ms": cl})
        print(f"pytorch {arch['name']}: eager {eager:.3f} ms, channels_last {cl:.3f} ms", flush=True)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run([args.bench, "--models=" + ",".join(paths), "--batches=1", "--benchmark_filter=model/",
                          f"--benchmark_repetitions={args.repeats}", "--benchmark_min_time=0.05",
                          "--benchmark_report_aggregates_only=true", "--benchmark_format=json"],
                         capture_output=True, text=True, env=env, check=True)
    bench = json.loads(out.stdout)
    medians = {b["run_name"].split("/")[1]: b["real_time"] for b in bench["benchmarks"]
               if b.get("aggregate_name") == "median"}
    print(f"\n{'model':<12} {'gati ms':>9} {'torch eager':>12} {'torch CL':>10} {'ratio':>7}")
    for r in rows:
        r["gati_ms"] = medians[r["model"]]
        best = min(r["torch_eager_ms"], r["torch_channels_last_ms"])
        r["ratio_gati_over_torch_best"] = r["gati_ms"] / best
        print(f"{r['model']:<12} {r['gati_ms']:>9.3f} {r['torch_eager_ms']:>12.3f} {r['torch_channels_last_ms']:>10.3f} "
              f"{r['ratio_gati_over_torch_best']:>7.2f}")
    print("(batch 1, float32, medians; ratio = gati / best PyTorch, below 1.0 is faster)")
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
        record = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads},
                  "torch": torch.__version__, "commit": commit, "repeats": args.repeats,
                  "command": " ".join(["bench/compare_pytorch_cpu.py"] + sys.argv[1:]), "results": rows}
        for r in record["results"]:
            r.pop("path")
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
