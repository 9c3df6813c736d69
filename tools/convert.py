#!/usr/bin/python3
"""Convert a torchvision-style ResNet state_dict to gati's .safetensors format.

  tools/convert.py --arch resnet50 --checkpoint resnet50-0676ba61.pth --out resnet50.safetensors
  tools/convert.py --arch resnet20 --random --seed 1 --in-channels 1 --out r20.safetensors

The file keeps PyTorch's parameter names and unfolded batch-norm tensors (gati
folds them at load), and stores the architecture as JSON under the metadata
key "gati.arch".
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

import gati_models  # noqa: E402
import safetensors_io  # noqa: E402


def load_state_dict(path):
    obj = torch.load(path, map_location="cpu")
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise SystemExit(f"{path}: not a state_dict (found {type(obj).__name__})")
    # DataParallel checkpoints prefix every name with "module."
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def write_model(arch, state, out, dtype=torch.float32, extra_meta=None):
    tensors = {k: v.to(dtype) if v.is_floating_point() else v
               for k, v in state.items() if not k.endswith("num_batches_tracked")}
    meta = {"gati.arch": gati_models.arch_json(arch), "gati.format": "gati-resnet/1"}
    if extra_meta:
        meta.update(extra_meta)
    safetensors_io.save(out, tensors, meta)


def read_model(path):
    """A gati model file as (PyTorch reference model in eval mode, architecture dict)."""
    tensors, meta = safetensors_io.load(path)
    arch = json.loads(meta["gati.arch"])
    model = gati_models.build_reference(arch)
    model.load_state_dict(tensors, strict=False)
    return model.eval(), arch


def benchmark_model_files(names, folder, demo_path):
    """Paths of model files for the side-by-side benchmarks: "demo" is the
    committed demo model, any other name a seeded random-weight model written
    into `folder`."""
    paths = []
    for name in names:
        if name == "demo":
            paths.append(demo_path)
            continue
        arch = gati_models.arch_for(name)
        model = gati_models.randomize_(gati_models.build_reference(arch), seed=1)
        path = os.path.join(folder, f"{name}.safetensors")
        write_model(arch, model.state_dict(), path)
        paths.append(path)
    return paths


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True, help="one of: " + ", ".join(sorted(gati_models.ARCHS)))
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="torch.save'd state_dict (.pth)")
    src.add_argument("--random", action="store_true", help="seeded random weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--in-channels", type=int)
    ap.add_argument("--num-classes", type=int)
    ap.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    ap.add_argument("--mean", type=float, nargs="+")
    ap.add_argument("--std", type=float, nargs="+")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    args = ap.parse_args()

    arch = gati_models.arch_for(args.arch, args.in_channels, args.num_classes, args.input_size, args.mean, args.std)
    model = gati_models.build_reference(arch)
    if args.random:
        gati_models.randomize_(model, args.seed, in_channels=arch["in_channels"])
        state = model.state_dict()
    else:
        state = load_state_dict(args.checkpoint)
        if args.num_classes is None and "fc.weight" in state:
            arch["num_classes"] = int(state["fc.weight"].shape[0])
            model = gati_models.build_reference(arch)
        if args.in_channels is None and "conv1.weight" in state:
            arch["in_channels"] = int(state["conv1.weight"].shape[1])
            model = gati_models.build_reference(arch)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise SystemExit(f"{args.checkpoint}: does not match --arch {args.arch}: "
                             f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                             f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        state = model.state_dict()
    write_model(arch, state, args.out, getattr(torch, args.dtype))
    n = sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))
    print(f"wrote {args.out}: {arch['name']}, {n / 1e6:.2f}M values, {args.dtype}")


if __name__ == "__main__":
    main()
