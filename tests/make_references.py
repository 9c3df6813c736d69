#!/usr/bin/python3
"""Golden outputs from PyTorch for gati's parity tests, made at test time.

For each architecture: a seeded random-weight model (tools/convert.py's
writer, non-trivial batch-norm statistics), a random input batch, and the
logits PyTorch computes in float32 (eval mode), all as .safetensors under OUT:
  OUT/<arch>.model.safetensors, OUT/<arch>.b<N>.input.safetensors (tensor "input"),
  OUT/<arch>.b<N>.logits.safetensors (tensor "logits").
ImageNet architectures are torchvision's own models; CIFAR-style ones are
tools/gati_models.GatiResNet.  A manifest.json lists what was made.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
import torch  # noqa: E402

import convert  # noqa: E402
import gati_models  # noqa: E402
import safetensors_io  # noqa: E402

# (arch, overrides): input sizes are the models' own except where noted; one
# CIFAR model takes 1 channel and another 100 classes to cover those paths.
CASES = [
    ("resnet18", {}), ("resnet34", {}), ("resnet50", {}), ("resnet101", {}), ("resnet152", {}),
    ("wide_resnet50_2", {}), ("resnext50_32x4d", {}),
    ("resnet20", {"in_channels": 1, "input_size": (28, 28)}), ("resnet32", {}), ("resnet44", {}),
    ("resnet56", {"num_classes": 100}), ("resnet110", {}), ("cifar_resnet18", {}),
    ("cifar_resnet50", {"in_channels": 1, "input_size": (28, 28)}),  # CIFAR stem with bottlenecks
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="*", help="subset of architectures")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(os.cpu_count())
    manifest = []
    for i, (name, over) in enumerate(CASES):
        if args.only and name not in args.only:
            continue
        t0 = time.time()
        arch = gati_models.arch_for(name, **over)
        model = gati_models.build_reference(arch)
        gati_models.randomize_(model, args.seed + i, in_channels=arch["in_channels"])
        model.eval()
        model_path = os.path.join(args.out, f"{name}.model.safetensors")
        convert.write_model(arch, model.state_dict(), model_path)
        g = torch.Generator().manual_seed(1000 + i)
        entry = {"arch": name, "model": model_path, "classes": arch["num_classes"], "batches": []}
        for n in args.batches:
            x = torch.randn((n, arch["in_channels"]) + tuple(arch["input_size"]), generator=g)
            with torch.no_grad():
                y = model(x)
            ip = os.path.join(args.out, f"{name}.b{n}.input.safetensors")
            lp = os.path.join(args.out, f"{name}.b{n}.logits.safetensors")
            safetensors_io.save(ip, {"input": x})
            safetensors_io.save(lp, {"logits": y})
            entry["batches"].append({"n": n, "input": ip, "logits": lp})
        manifest.append(entry)
        print(f"{name}: {time.time() - t0:.1f}s", flush=True)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
