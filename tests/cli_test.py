#!/usr/bin/python3
"""End-to-end tests of the `gati` command line, as a user would drive it.

- `gati infer` against PyTorch's logits (references from make_references.py).
- Damaged weights files and inputs fed to every command: each must exit 1
  with one "gati: error: ..." line naming the problem, never crash.
- `gati run` on the demo model and `gati profile` outputs (JSON, trace).
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
import torch  # noqa: E402

import safetensors_io  # noqa: E402

RESULTS = {"passed": 0, "failed": 0}


def check(name, cond, detail=""):
    if cond:
        RESULTS["passed"] += 1
        print(f"[ OK ] {name}")
    else:
        RESULTS["failed"] += 1
        print(f"[FAIL] {name}: {detail}")


def run(gati, *args):
    p = subprocess.run([gati, *args], capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def expect_error(gati, name, args, needle):
    rc, out, err = run(gati, *args)
    lines = [l for l in err.strip().splitlines() if l]
    ok = rc == 1 and len(lines) == 1 and lines[0].startswith("gati: error:") and needle in lines[0]
    check(name, ok, f"rc={rc} stderr={err.strip()!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gati", required=True)
    ap.add_argument("--refs", required=True)
    ap.add_argument("--demo", required=True)
    args = ap.parse_args()
    gati = args.gati
    tmp = tempfile.mkdtemp(prefix="gati_cli_")
    try:
        # --help everywhere
        for cmd in ([], ["info"], ["infer"], ["run"], ["profile"]):
            rc, out, _ = run(gati, *cmd, "--help")
            check(f"help {' '.join(cmd) or 'top'}", rc == 0 and "usage" in out.lower(), f"rc={rc}")
        rc, _, err = run(gati)
        check("no command prints usage and exits 2", rc == 2 and "usage" in err.lower())

        # infer parity with PyTorch through the CLI contract
        manifest = json.load(open(os.path.join(args.refs, "manifest.json")))
        for entry in manifest:
            if entry["arch"] not in ("resnet20", "resnet50", "resnext50_32x4d"):
                continue
            for b in entry["batches"]:
                out_path = os.path.join(tmp, "logits.safetensors")
                rc, _, err = run(gati, "infer", "--model", entry["model"], "--input", b["input"], "--output", out_path)
                if rc != 0:
                    check(f"infer {entry['arch']} b{b['n']}", False, err)
                    continue
                got = safetensors_io.load(out_path)[0]["logits"]
                ref = safetensors_io.load(b["logits"])[0]["logits"]
                rel = ((got - ref).abs().max() / ref.abs().max()).item()
                check(f"infer {entry['arch']} b{b['n']} matches PyTorch (rel {rel:.1e})", rel <= 1e-4, f"rel={rel}")

        model = next(e["model"] for e in manifest if e["arch"] == "resnet20")
        good_in = next(e for e in manifest if e["arch"] == "resnet20")["batches"][0]["input"]
        raw = open(model, "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]

        # damaged weights files, fed to every command that takes a model
        damaged = {
            "missing": (None, "cannot open"),
            "empty": (b"", "shorter than the 8-byte header length"),
            "truncated": (raw[: len(raw) // 2], "truncated?"),
            "header-length": (struct.pack("<Q", len(raw) * 4) + raw[8:], "runs past the end"),
            "bad-json": (raw[:8] + b"{" * n + raw[8 + n:], "not valid JSON"),
            "garbage": (os.urandom(4096), ""),
        }
        for label, (content, needle) in damaged.items():
            path = os.path.join(tmp, f"{label}.safetensors")
            if content is not None:
                open(path, "wb").write(content)
            out = os.path.join(tmp, "o.safetensors")
            expect_error(gati, f"info on {label} model", ["info", path], needle)
            expect_error(gati, f"infer on {label} model", ["infer", "--model", path, "--input", good_in, "--output", out], needle)
            expect_error(gati, f"run on {label} model", ["run", "--model", path, "--data", "fashion-mnist", "--limit", "8"], needle)
            expect_error(gati, f"profile on {label} model", ["profile", "--model", path, "--repeats", "1"], needle)

        # a weights file with a tensor of the wrong shape / a missing tensor
        tensors, meta = safetensors_io.load(model)
        bad = dict(tensors)
        bad["layer2.1.conv1.weight"] = bad["layer2.1.conv1.weight"][:, :16]
        safetensors_io.save(os.path.join(tmp, "shape.safetensors"), bad, meta)
        expect_error(gati, "wrong tensor shape", ["info", os.path.join(tmp, "shape.safetensors")],
                     "layer2.1.conv1.weight: expected shape [32,32,3,3], file has [32,16,3,3]")
        bad = dict(tensors)
        del bad["fc.bias"]
        safetensors_io.save(os.path.join(tmp, "miss.safetensors"), bad, meta)
        expect_error(gati, "missing tensor", ["info", os.path.join(tmp, "miss.safetensors")], "tensor 'fc.bias' is missing")

        # bad inputs to infer
        x = safetensors_io.load(good_in)[0]["input"]
        cases = {
            "nan": ({"input": torch.where(torch.arange(x.numel()).reshape(x.shape) == 5, torch.tensor(float("nan")), x)}, "is nan"),
            "channels": ({"input": torch.randn(1, 3, 28, 28)}, "3 channels, but model 'resnet20' takes 1"),
            "dtype": ({"input": x.half()}, "'input' is F16; expected F32"),
            "rank": ({"input": x[0]}, "expected [N, C, H, W]"),
            "empty": ({"input": torch.zeros(0, 1, 28, 28)}, "empty batch"),
            "name": ({"image": x}, "no tensor named 'input'"),
        }
        for label, (t, needle) in cases.items():
            p = os.path.join(tmp, f"in-{label}.safetensors")
            safetensors_io.save(p, t)
            expect_error(gati, f"infer with bad input: {label}",
                         ["infer", "--model", model, "--input", p, "--output", os.path.join(tmp, "o.safetensors")], needle)
        expect_error(gati, "unknown option", ["run", "--model", model, "--data", "fashion-mnist", "--bogus", "1"], "--bogus")
        expect_error(gati, "bad batch", ["run", "--model", model, "--data", "fashion-mnist", "--batch", "zero"],
                     "--batch: Value zero")
        expect_error(gati, "wrong data set for model", ["run", "--model",
                                                        next(e["model"] for e in manifest if e["arch"] == "resnet32"),
                                                        "--data", "fashion-mnist", "--limit", "4"], "images are 1x28x28")

        # the demo model through `gati run`
        js = os.path.join(tmp, "run.json")
        rc, out, err = run(gati, "run", "--model", args.demo, "--data", "fashion-mnist", "--limit", "500",
                           "--batch", "50", "--json", js)
        ok = rc == 0 and os.path.exists(js)
        acc = json.load(open(js))["accuracy"] if ok else 0
        check(f"run demo model (accuracy {acc:.3f} on 500 test images)", ok and acc >= 0.88, out + err)

        # profile writes a table, JSON and a Chrome trace
        pj, pt = os.path.join(tmp, "p.json"), os.path.join(tmp, "p.trace.json")
        rc, out, err = run(gati, "profile", "--model", args.demo, "--batch", "2", "--repeats", "3",
                           "--json", pj, "--trace", pt)
        ok = rc == 0 and "layer3.2.conv2" in out and "GFLOP/s" in out
        prof = json.load(open(pj)) if ok else {}
        trace = json.load(open(pt)) if ok else {}
        check("profile table, JSON and trace", ok and len(prof.get("layers", [])) == 24
              and prof.get("call_ms_median", 0) > 0 and "whole call without per-layer events" in out
              and any(e.get("ph") == "X" for e in trace.get("traceEvents", [])), out + err)

        # caches: build on a small slice, replay a trace, reject damaged cache files
        caches = os.path.join(tmp, "caches.safetensors")
        rc, out, err = run(gati, "cache", "build", "--model", args.demo, "--data", "fashion-mnist", "--train", "1500",
                           "--holdout", "800", "--epochs", "3", "--out", caches)
        check("cache build", rc == 0 and os.path.exists(caches) and "layer3.2" in out and " mlp32 " in out
              and "mlp32 caches at 10 exits" in out, out + err)
        sim = os.path.join(tmp, "sim.json")
        tr = os.path.join(tmp, "trace.json")
        rc, out, err = run(gati, "serve-sim", "--model", args.demo, "--caches", caches, "--trace", "locality",
                           "--requests", "60", "--seed", "3", "--json", sim, "--save-trace", tr)
        ok = rc == 0 and os.path.exists(sim)
        rep = json.load(open(sim)) if ok else {}
        check("serve-sim report", ok and rep["requests"] == 60 and len(rep["exits"]) == 10
              and 0 <= rep["hit_rate"] <= 1 and rep["latency_ms"]["full"]["mean"] > 0, out + err)
        rc, out2, err = run(gati, "serve-sim", "--model", args.demo, "--caches", caches, "--trace", tr, "--json", sim)
        check("serve-sim replays a saved trace identically",
              rc == 0 and json.load(open(sim))["accuracy_full"] == rep.get("accuracy_full"), err)
        open(os.path.join(tmp, "badtrace.json"), "w").write('{"format":"gati-trace/1","requests":[]}')
        expect_error(gati, "malformed trace", ["serve-sim", "--model", args.demo, "--caches", caches,
                                               "--trace", os.path.join(tmp, "badtrace.json")], "badtrace.json: missing key 'kind'")
        r32 = next(e["model"] for e in manifest if e["arch"] == "resnet32")
        expect_error(gati, "cache file for another model", ["serve-sim", "--model", r32, "--caches", caches,
                                                            "--trace", "uniform"], "caches were built for 'resnet20', the model is 'resnet32'")
        r20 = next(e["model"] for e in manifest if e["arch"] == "resnet20")  # random weights, the demo's architecture
        expect_error(gati, "cache file for other weights", ["serve-sim", "--model", r20, "--caches", caches,
                                                            "--trace", "uniform"], "caches were built for other weights")
        expect_error(gati, "model file used as a cache file", ["serve-sim", "--model", args.demo, "--caches", args.demo,
                                                               "--trace", "uniform"], "metadata key 'gati.caches' is missing")
        ctensors, cmeta = safetensors_io.load(caches)
        ctensors["exit.layer2.0.weight"] = ctensors["exit.layer2.0.weight"][:, :5]
        safetensors_io.save(os.path.join(tmp, "badcache.safetensors"), ctensors, cmeta)
        expect_error(gati, "cache tensor of the wrong shape", ["serve-sim", "--model", args.demo, "--caches",
                                                               os.path.join(tmp, "badcache.safetensors"), "--trace", "uniform"],
                     "exit.layer2.0.weight: expected shape [10,")

        # online prior adaptation on a drifting class mix; caches without a label prior are refused
        rc, out, err = run(gati, "serve-sim", "--model", args.demo, "--caches", caches, "--trace", "drift",
                           "--requests", "100", "--seed", "8", "--online", "prior", "--prior-window", "50",
                           "--json", sim)
        online = json.load(open(sim)).get("online", {}) if rc == 0 and os.path.exists(sim) else {}
        check("serve-sim --online prior", online.get("prior_updates") == 3
              and abs(sum(online.get("prior_estimate", [])) - 1) < 1e-6 and "prior corrections" in out, out + err)
        ctensors, cmeta = safetensors_io.load(caches)
        del ctensors["label_prior"]
        safetensors_io.save(os.path.join(tmp, "noprior.safetensors"), ctensors, cmeta)
        expect_error(gati, "online prior without a label prior",
                     ["serve-sim", "--model", args.demo, "--caches", os.path.join(tmp, "noprior.safetensors"),
                      "--trace", "drift", "--online", "prior"], "rebuild them with 'gati cache build'")

        # online SGD in the serving backend: the host path's steps and answers (linear heads, which the backend
        # learner trains); host-only settings and MLP heads refused
        expect_error(gati, "backend SGD with MLP heads", ["serve-sim", "--model", args.demo, "--caches", caches,
                                                          "--trace", "uniform", "--online", "sgd-backend"],
                     "learning in the backend trains linear heads")
        linear = os.path.join(tmp, "linear.safetensors")
        rc, out, err = run(gati, "cache", "build", "--model", args.demo, "--data", "fashion-mnist", "--train", "1500",
                           "--holdout", "800", "--epochs", "3", "--hidden", "0", "--cost", "macs", "--out", linear)
        check("cache build --hidden 0", rc == 0 and " linear " in out and "mlp" not in out, out + err)
        for where in ("sgd", "sgd-backend"):
            rc, out, err = run(gati, "serve-sim", "--model", args.demo, "--caches", linear, "--trace", "uniform",
                               "--requests", "400", "--seed", "9", "--online", where, "--online-lr", "0.005",
                               "--json", os.path.join(tmp, where + ".json"))
            check(f"serve-sim --online {where}", rc == 0, out + err)
        reps = [json.load(open(os.path.join(tmp, w + ".json"))) if os.path.exists(os.path.join(tmp, w + ".json"))
                else {} for w in ("sgd", "sgd-backend")]
        check("... the same steps, taken in the backend", reps[0].get("online", {}).get("sgd_steps") ==
              reps[1].get("online", {}).get("sgd_steps") and reps[1].get("online", {}).get("sgd_where") == "backend"
              and reps[1].get("online", {}).get("sgd_steps", 0) > 0 and reps[0].get("hit_rate") == reps[1].get("hit_rate"),
              str(reps)[:2000])
        expect_error(gati, "backend SGD with feedback", ["serve-sim", "--model", args.demo, "--caches", linear,
                                                         "--trace", "uniform", "--online", "sgd-backend",
                                                         "--feedback", "0.1"], "takes no feedback, guard or prior")

        # Freeze's k-NN caches, compared with the learned ones side by side on one trace
        knn = os.path.join(tmp, "knn.safetensors")
        rc, out, err = run(gati, "cache", "build", "--model", args.demo, "--data", "fashion-mnist", "--train", "1500",
                           "--holdout", "800", "--kind", "knn", "--knn-entries", "500", "--cost", "macs", "--out", knn)
        check("cache build --kind knn", rc == 0 and "500 x 64" in out and "knn caches" in out, out + err)
        rc, out, err = run(gati, "serve-sim", "--model", args.demo, "--caches", caches, knn, "--trace", "uniform",
                           "--requests", "40", "--seed", "5", "--json", sim)
        runs = json.load(open(sim))["runs"] if rc == 0 and os.path.exists(sim) else []
        check("serve-sim compares cache files side by side",
              len(runs) == 2 and runs[1]["caches"] == knn and all(r["requests"] == 40 for r in runs)
              and all(r["macs_per_request"]["full"] > 0 and r["speedup_compute"] > 0 for r in runs)
              and runs[0]["accuracy_full"] == runs[1]["accuracy_full"]
              and "compute" in out, out + err)
        expect_error(gati, "--per-request with two cache files",
                     ["serve-sim", "--model", args.demo, "--caches", caches, knn, "--trace", "uniform",
                      "--per-request", os.path.join(tmp, "r.jsonl")], "--per-request takes one --caches file")
        expect_error(gati, "unknown cache kind", ["cache", "build", "--model", args.demo, "--data", "fashion-mnist",
                                                  "--kind", "faiss", "--out", os.path.join(tmp, "x.safetensors")],
                     "--kind: faiss not in {linear,knn,kmeans}")

        # a JSON cache configuration: per-exit settings, a flag over the file, and a damaged file
        cfg = os.path.join(tmp, "caches.json")
        json.dump({"train": 1500, "holdout": 900, "cost": "macs", "sgd": {"epochs": 2},
                   "exits": {"stem": {"enabled": False}, "layer1.0": {"kind": "knn", "pool": "avg2x2"}}},
                  open(cfg, "w"))
        rc, out, err = run(gati, "cache", "build", "--config", cfg, "--print-config", "--holdout", "800")
        printed = json.loads(out) if rc == 0 else {}
        check("cache build --print-config", printed.get("holdout") == 800 and printed.get("train") == 1500
              and printed.get("exits", {}).get("stem", {}).get("enabled") is False, out + err)
        configured = os.path.join(tmp, "configured.safetensors")
        rc, out, err = run(gati, "cache", "build", "--model", args.demo, "--data", "fashion-mnist", "--config", cfg,
                           "--holdout", "800", "--out", configured)
        rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("stem", "layer"))}
        check("cache build --config", rc == 0 and "stem" not in rows and rows.get("layer1.0", [""] * 3)[1:3] == ["knn", "avg2x2"]
              and rows.get("layer2.0", [""] * 2)[1] == "mlp32" and "configured caches at 9 exits" in out, out + err)
        open(os.path.join(tmp, "bad.json"), "w").write('{"calibrate": "twice"}')
        expect_error(gati, "bad cache configuration", ["cache", "build", "--model", args.demo, "--data", "fashion-mnist",
                                                       "--config", os.path.join(tmp, "bad.json"), "--out", configured],
                     "bad.json: 'calibrate' is 'twice' (valid: cascade, per-exit)")
        expect_error(gati, "cache build over its configuration", ["cache", "build", "--model", args.demo, "--data",
                                                                  "fashion-mnist", "--config", cfg, "--out", cfg],
                     "--out")

        # outputs never destroy inputs: data files, one output named twice, an
        # unwritable output refused before any other is written, and numbers
        # that must not wrap (issue 12's reproducers)
        import hashlib
        data = os.path.join(tmp, "data")
        os.mkdir(data)
        src = os.environ.get("GATI_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
        for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                  "t10k-labels-idx1-ubyte.gz"):
            shutil.copy(os.path.join(src, f), data)
        digest = lambda: {f: hashlib.sha256(open(os.path.join(data, f), "rb").read()).hexdigest() for f in os.listdir(data)}
        before = digest()
        expect_error(gati, "run --json over a data file", ["run", "--model", args.demo, "--data", "fashion-mnist",
                                                           "--data-dir", data, "--limit", "3", "--json",
                                                           os.path.join(data, "t10k-labels-idx1-ubyte.gz")],
                     "is the input file")
        expect_error(gati, "serve-sim --json over a data file",
                     ["serve-sim", "--model", args.demo, "--caches", caches, "--trace", "uniform", "--requests", "5",
                      "--data-dir", data, "--json", os.path.join(data, "t10k-images-idx3-ubyte.gz")], "is the input file")
        expect_error(gati, "cache build --out over a data file",
                     ["cache", "build", "--model", args.demo, "--data", "fashion-mnist", "--data-dir", data, "--train",
                      "50", "--holdout", "20", "--out", os.path.join(data, "train-images-idx3-ubyte.gz")],
                     "is the input file")
        check("data files unchanged", digest() == before)
        same = os.path.join(tmp, "same.json")
        expect_error(gati, "profile --json and --trace the same file",
                     ["profile", "--model", args.demo, "--repeats", "1", "--json", same, "--trace", same],
                     "is also --json's file")
        fifo = os.path.join(tmp, "fifo")
        os.mkfifo(fifo)
        good = os.path.join(tmp, "good.json")
        expect_error(gati, "serve-sim with one output a pipe",
                     ["serve-sim", "--model", args.demo, "--caches", caches, "--trace", "uniform", "--requests", "5",
                      "--json", good, "--per-request", fifo], "not a regular file")
        check("a refused command wrote none of its outputs", not os.path.exists(good))
        alias = os.path.join(tmp, "alias.json")  # not there yet: the same file by two spellings
        os.makedirs(os.path.join(tmp, "sub"), exist_ok=True)
        expect_error(gati, "two outputs, one file by two spellings",
                     ["profile", "--model", args.demo, "--repeats", "1", "--json", alias, "--trace",
                      os.path.join(tmp, ".", "sub", "..", "alias.json")], "is also --json's file")
        expect_error(gati, "an output's file name too long for its temporary",
                     ["profile", "--model", args.demo, "--repeats", "1", "--json", good,
                      "--trace", os.path.join(tmp, "b" * 240)], "characters long")
        check("... and nothing written", not os.path.exists(good))
        expect_error(gati, "an output inside a file", ["profile", "--model", args.demo, "--json",
                                                      os.path.join(args.demo, "x.json")], "is not a folder")
        expect_error(gati, "an output given as an empty path", ["serve-sim", "--model", args.demo, "--caches", caches,
                                                               "--trace", "uniform", "--per-request", ""],
                     "--per-request: an empty path")
        expect_error(gati, "NaN for a float option", ["serve-sim", "--model", args.demo, "--caches", caches, "--trace",
                                                      "uniform", "--online", "sgd", "--online-lr", "nan"],
                     "must be a finite number")
        for size in ("4294967324x28", "4294967297x1", "28x28x28", "28"):
            expect_error(gati, f"profile --size {size}", ["profile", "--model", args.demo, "--size", size],
                         "--size must be 'HxW'")
        expect_error(gati, "profile at a size over the memory limit",
                     ["profile", "--model", args.demo, "--size", "16384x16384", "--batch", "4096"],
                     "over the session's limit")
        big = os.path.join(tmp, "in-big.safetensors")
        safetensors_io.save(big, {"input": torch.full((1, 1, 28, 28), 3e38)})
        expect_error(gati, "infer --normalize overflowing float",
                     ["infer", "--model", args.demo, "--input", big, "--output", os.path.join(tmp, "o.safetensors"),
                      "--normalize"], "in-big.safetensors: normalize: the value at [0,0,0,0] leaves float's range")
        dtensors, dmeta = safetensors_io.load(args.demo)
        arch = json.loads(dmeta["gati.arch"])
        arch["std"] = [1e-45]
        dmeta = dict(dmeta, **{"gati.arch": json.dumps(arch)})
        safetensors_io.save(os.path.join(tmp, "tiny-std.safetensors"), dtensors, dmeta)
        expect_error(gati, "a model whose std is subnormal", ["info", os.path.join(tmp, "tiny-std.safetensors")],
                     "'std' values must be in [1e-06, 1e+06]")
        saved = json.load(open(tr))
        saved["pad"] = [0] * 10
        open(os.path.join(tmp, "padded.json"), "w").write(json.dumps(saved))
        expect_error(gati, "trace with an unknown key", ["serve-sim", "--model", args.demo, "--caches", caches,
                                                        "--trace", os.path.join(tmp, "padded.json")],
                     "padded.json: unknown key 'pad'")
        saved = json.load(open(tr))
        saved["params"]["zz"] = 1
        open(os.path.join(tmp, "params.json"), "w").write(json.dumps(saved))
        expect_error(gati, "trace with an unknown parameter", ["serve-sim", "--model", args.demo, "--caches", caches,
                                                              "--trace", os.path.join(tmp, "params.json")],
                     "'params': unknown key 'zz'")
        saved = json.load(open(tr))
        saved["source_size"] = 123
        open(os.path.join(tmp, "size.json"), "w").write(json.dumps(saved))
        expect_error(gati, "trace for a data set of another size", ["serve-sim", "--model", args.demo, "--caches",
                                                                   caches, "--trace", os.path.join(tmp, "size.json")],
                     "size.json: trace was made for fashion-mnist/test with 123 items")
        huge = os.path.join(tmp, "huge.json")
        with open(huge, "wb") as f:
            f.truncate(100 << 20)  # sparse: no disk used, refused by its size before it is read
        expect_error(gati, "trace file over the size limit", ["serve-sim", "--model", args.demo, "--caches", caches,
                                                             "--trace", huge], "more than a trace of 1000000 requests")

        rc, out, _ = run(gati, "info", args.demo, "--json")
        check("info --json", rc == 0 and json.loads(out)["name"] == "resnet20" and len(json.loads(out)["blocks"]) == 9)
        rc, out, _ = run(gati, "devices")
        check("devices", rc == 0 and "cpu: available" in out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
