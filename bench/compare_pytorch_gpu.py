#!/usr/bin/python3
"""gati's CUDA backend against PyTorch on the same GPU, in one run.

  bench/compare_pytorch_gpu.py --bench build-gpu/bench/bench_gpu [--models resnet18 resnet50 resnet152 demo]
      [--batches 1 8 64 256] [--precisions fp32 fp16] [--no-compile] [--out bench/results/gpu_compare.json]

Makes random-weight models with tools/convert.py's writer (the demo model is
taken as it is), times PyTorch in four configurations per model, batch and
precision: eager, eager channels_last, a captured CUDA graph (channels_last)
and torch.compile (mode max-autotune, unless --no-compile), each with the
input already on the GPU, timed with CUDA events after warm-up, medians.
Then it runs gati's bench_gpu (Google Benchmark, medians of repetitions) on
the same files: gati's time is a whole run as a caller sees it, host input
in and results out.  ratio_best = gati / fastest PyTorch configuration
(below 1.0: gati is faster).  Precisions gati does not run yet get
gati_ms null.  The interpreter comes from GATI_PYTHON on the command line
that calls this script; it needs PyTorch with CUDA.
"""
import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
import torch  # noqa: E402

import convert  # noqa: E402

GATI_PRECISIONS = {"fp32", "fp16"}  # bench_gpu, and bench_gpu --fp16 (FP16 storage, FP32 accumulation)


def time_cuda(fn, repeats, warmup):
    """Median milliseconds of fn() between CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_wall(fn, repeats, warmup):
    """Median wall-clock milliseconds of fn(), which ends with a copy to the host."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


HOST_IO = ("host_io_eager", "host_io_cuda_graphs")


def torch_timings(model, x, repeats, compile_ok):
    out = {}
    with torch.inference_mode():
        out["eager"] = time_cuda(lambda: model(x), repeats, 5)
        mcl = copy.deepcopy(model).to(memory_format=torch.channels_last)  # .to() on a module is in place
        xcl = x.contiguous(memory_format=torch.channels_last)
        out["channels_last"] = time_cuda(lambda: mcl(xcl), repeats, 5)
        static_x = xcl.clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                mcl(static_x)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = mcl(static_x)
        out["cuda_graphs"] = time_cuda(graph.replay, repeats, 5)
        # What gati's bench_gpu times: the input from (pageable) host memory,
        # the logits back to it, wall clock.  Eager and the recorded graph.
        x_host = x.cpu()
        out["host_io_eager"] = time_wall(lambda: model(x_host.cuda()).cpu(), repeats, 5)
        out["host_io_cuda_graphs"] = time_wall(lambda: (static_x.copy_(x_host), graph.replay(), static_out.cpu()),
                                               repeats, 5)
    out["compile"] = None
    if compile_ok:
        try:
            compiled = torch.compile(mcl, mode="max-autotune")
            with torch.inference_mode():
                out["compile"] = time_cuda(lambda: compiled(xcl), repeats, 10)
        except Exception as e:  # report, keep the other configurations
            print(f"  torch.compile failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
    return out


def header(args):
    commit = os.environ.get("GATI_COMMIT") or subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip() or "unknown"
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    return {"gpu": torch.cuda.get_device_name(0), "nvidia_smi": smi, "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "commit": commit,
            "repeats": args.repeats, "command": " ".join(["bench/compare_pytorch_gpu.py"] + sys.argv[1:]),
            "timing": "medians; PyTorch: CUDA events with the input on the GPU, and wall clock host input to host logits (host_io_*); gati: bench_gpu real time, host input to results (gati_ms) and device input to host logits (gati_device_input_ms)"}


def gati_medians(bench, paths, batches, repeats, precision):
    out = subprocess.run([bench, "--models=" + ",".join(paths), "--batches=" + ",".join(map(str, batches)),
                          "--benchmark_filter=^model", f"--benchmark_repetitions={repeats}",
                          "--benchmark_min_time=0.05", "--benchmark_report_aggregates_only=true",
                          "--benchmark_format=json"] + (["--fp16"] if precision == "fp16" else []),
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(f"bench_gpu failed ({out.returncode}): {out.stderr.strip()[-2000:]}", flush=True)
        return {}
    medians = {}  # (model, batch) -> host input ms; (model, batch, "device") -> device input ms
    for b in json.loads(out.stdout)["benchmarks"]:
        if b.get("aggregate_name") == "median":
            kind, model, batch = b["run_name"].split("/")[:3]
            key = (model, int(batch.split(":")[1]), precision)
            medians[key + (("device",) if kind == "model_device_input" else ())] = b["real_time"]
    return medians


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default=os.path.join(HERE, "..", "build", "bench", "bench_gpu"))
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "resnet152", "demo"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64, 256])
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "fp16"], default=["fp32", "fp16"])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to autotune)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("compare_pytorch_gpu: PyTorch sees no CUDA device")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False  # FP32 means FP32 on both sides

    tmp = tempfile.mkdtemp(prefix="gati_gpu_bench_")
    paths = convert.benchmark_model_files(args.models, tmp, os.path.join(HERE, "..", "weights", "demo",
                                                                          "fmnist_resnet20.safetensors"))

    rows = []
    for p in paths:
        model, arch = convert.read_model(p)
        for precision in args.precisions:
            dtype = torch.float32 if precision == "fp32" else torch.float16
            m = copy.deepcopy(model).to("cuda", dtype=dtype)
            for batch in args.batches:
                x = torch.randn(batch, arch["in_channels"], *arch["input_size"], device="cuda", dtype=dtype)
                t = torch_timings(m, x, args.repeats, not args.no_compile)
                rows.append({"model": arch["name"], "batch": batch, "precision": precision, "gati_ms": None,
                             "pytorch_ms": t, "ratio_best": None})
                shown = ", ".join(f"{k} {v:.3f}" for k, v in t.items() if v is not None)
                print(f"pytorch {arch['name']} b{batch} {precision}: {shown} ms", flush=True)

    medians = {}
    for precision in sorted(GATI_PRECISIONS & set(args.precisions)):
        medians.update(gati_medians(args.bench, paths, args.batches, max(5, args.repeats // 5), precision))
    print(f"\n{'model':<12} {'batch':>5} {'prec':>5} {'gati ms':>9} {'torch io':>9} {'ratio io':>9} "
          f"{'torch gpu':>10} {'config':>14} {'ratio gpu':>10} {'gati dev':>9} {'ratio dev':>10}")
    for r in rows:
        if r["precision"] in GATI_PRECISIONS:
            r["gati_ms"] = medians.get((r["model"], r["batch"], r["precision"]))
            r["gati_device_input_ms"] = medians.get((r["model"], r["batch"], r["precision"], "device"))
        t = r["pytorch_ms"]
        best_cfg, best = min(((k, v) for k, v in t.items() if v is not None and k not in HOST_IO),
                             key=lambda kv: kv[1])
        io = min(t[k] for k in HOST_IO)
        if r["gati_ms"] is not None:
            r["ratio_best"] = r["gati_ms"] / best
            r["ratio_host_io"] = r["gati_ms"] / io
        if r.get("gati_device_input_ms") is not None:
            r["ratio_device_input"] = r["gati_device_input_ms"] / best
        g = f"{r['gati_ms']:.3f}" if r["gati_ms"] is not None else "-"
        ratio = f"{r['ratio_best']:.2f}" if r["ratio_best"] is not None else "-"
        ratio_io = f"{r['ratio_host_io']:.2f}" if r.get("ratio_host_io") is not None else "-"
        dev = r.get("gati_device_input_ms")
        g_dev = f"{dev:.3f}" if dev is not None else "-"
        ratio_dev = f"{r['ratio_device_input']:.2f}" if dev is not None else "-"
        print(f"{r['model']:<12} {r['batch']:>5} {r['precision']:>5} {g:>9} {io:>9.3f} {ratio_io:>9} "
              f"{best:>10.3f} {best_cfg:>14} {ratio:>10} {g_dev:>9} {ratio_dev:>10}")
    print("(medians.  gati: host input in, logits out, wall clock.  ratio io = gati / PyTorch doing the same\n"
          " (input from host memory, logits back); ratio gpu = gati / PyTorch's fastest configuration with the\n"
          " input already on the GPU.  gati dev: gati with its input already on the GPU too (input_on_device),\n"
          " logits back to the host; ratio dev = gati dev / that PyTorch configuration.  Below 1.0 gati is faster.)")
    if args.out:
        record = {"header": header(args), "rows": rows}
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
