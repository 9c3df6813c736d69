#!/usr/bin/python3
"""Train a CIFAR-style ResNet on Fashion-MNIST and convert it for gati.

  tools/train.py --arch resnet20 --epochs 8 --out models/fmnist_resnet20.safetensors

Runs on the GPU when torch sees one, else on the CPU.  Writes the model and,
beside it, a JSON record (command, seed, epochs, test accuracy, time).
"""
import argparse
import gzip
import json
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convert  # noqa: E402
import gati_models  # noqa: E402

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


def load_split(root, split):
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz")).float().div_(255).unsqueeze(1)
    y = read_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz")).long()
    return x, y


def augment(x):
    """Random 2-pixel shifts and horizontal flips, on the whole batch at once."""
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2))
    dx, dy = torch.randint(0, 5, (2,)).tolist()
    x = padded[:, :, dy:dy + 28, dx:dx + 28]
    flip = torch.rand(n) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def evaluate(model, x, y, mean, std, device, batch=1000):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = ((x[i:i + batch] - mean) / std).to(device)
            correct += (model(xb).argmax(1).cpu() == y[i:i + batch]).sum().item()
    return correct / len(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=DEFAULT_DIR)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training images (smoke runs)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint", help="save the training state here after every epoch and, when the file "
                    "exists, resume from it (long CPU runs that span sessions)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mean, std = gati_models.FASHION_MNIST_MEAN[0], gati_models.FASHION_MNIST_STD[0]
    arch = gati_models.arch_for(args.arch, in_channels=1, num_classes=10, input_size=(28, 28),
                                mean=[mean], std=[std])
    model = gati_models.GatiResNet(arch).to(device)
    if device == "cpu":
        model = model.to(memory_format=torch.channels_last)

    xtr, ytr = load_split(args.data, "train")
    xte, yte = load_split(args.data, "test")
    if args.limit:
        xtr, ytr = xtr[:args.limit], ytr[:args.limit]
    steps_per_epoch = (len(xtr) + args.batch - 1) // args.batch
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    t0 = time.time()
    first_epoch, spent = 0, 0.0
    if args.checkpoint and os.path.exists(args.checkpoint):
        state = torch.load(args.checkpoint)
        if state["args"] != {k: v for k, v in vars(args).items() if k != "threads"}:
            raise SystemExit(f"{args.checkpoint}: made with other arguments ({state['args']}); "
                             "remove it or pass the same ones")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng"])
        first_epoch, spent = state["epoch"], state["seconds"]
        print(f"resuming from {args.checkpoint} after epoch {first_epoch} ({spent:.0f}s so far)", flush=True)
    t0 -= spent
    for epoch in range(first_epoch, args.epochs):
        model.train()
        perm = torch.randperm(len(xtr))
        total_loss = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch:(s + 1) * args.batch]
            xb = ((augment(xtr[idx]) - mean) / std).to(device)
            if device == "cpu":
                xb = xb.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), ytr[idx].to(device), label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item()
            if sys.stderr.isatty() and s % 20 == 0:
                print(f"\repoch {epoch + 1}/{args.epochs} step {s}/{steps_per_epoch} loss {loss.item():.3f}",
                      end="", file=sys.stderr, flush=True)
        acc = evaluate(model, xte, yte, mean, std, device)
        print(f"\repoch {epoch + 1}/{args.epochs}: loss {total_loss / steps_per_epoch:.4f} "
              f"test accuracy {acc:.4f} ({time.time() - t0:.0f}s)", flush=True)
        if args.checkpoint:
            tmp = args.checkpoint + ".tmp"
            torch.save({"args": {k: v for k, v in vars(args).items() if k != "threads"},
                        "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "rng": torch.get_rng_state(), "epoch": epoch + 1, "seconds": time.time() - t0}, tmp)
            os.replace(tmp, args.checkpoint)

    model = model.cpu().to(memory_format=torch.contiguous_format)
    acc = evaluate(model, xte, yte, mean, std, "cpu")
    convert.write_model(arch, model.state_dict(), args.out, extra_meta={"gati.test_accuracy": f"{acc:.4f}"})
    record = {
        "command": " ".join(["tools/train.py"] + sys.argv[1:]),
        "arch": arch, "seed": args.seed, "epochs": args.epochs, "batch": args.batch, "lr": args.lr,
        "device": device, "torch": torch.__version__, "train_images": len(xtr),
        "test_accuracy": acc, "train_seconds": round(time.time() - t0, 1),
    }
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}: test accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
