"""Architecture descriptions and PyTorch reference models for gati.

The architecture dict is what gati stores as JSON in a .safetensors file's
metadata (key "gati.arch"); the C++ builder in engine/resnet.cpp reads the same
fields.  Parameter names follow torchvision (conv1, bn1, layerL.B.convK,
layerL.B.downsample.{0,1}, fc) so a torchvision state_dict converts as it is.
ImageNet architectures are built with torchvision itself, which keeps the
oracle external; CIFAR-style ones use the small class below, written to the
same naming.
"""
import copy
import json

import torch
from torch import nn

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
FASHION_MNIST_MEAN = [0.2860]
FASHION_MNIST_STD = [0.3530]


def _imagenet(name, block, layers, groups=1, width_per_group=64):
    return {
        "name": name, "block": block, "layers": layers,
        "widths": [64, 128, 256, 512], "stem": "imagenet", "stem_width": 64,
        "groups": groups, "width_per_group": width_per_group,
        "in_channels": 3, "input_size": [224, 224], "num_classes": 1000,
        "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
    }


def _cifar(name, layers, widths, stem_width, block="basic"):
    return {
        "name": name, "block": block, "layers": layers, "widths": widths,
        "stem": "cifar", "stem_width": stem_width, "groups": 1,
        "width_per_group": 64, "in_channels": 3, "input_size": [32, 32],
        "num_classes": 10, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
    }


ARCHS = {
    "resnet18": _imagenet("resnet18", "basic", [2, 2, 2, 2]),
    "resnet34": _imagenet("resnet34", "basic", [3, 4, 6, 3]),
    "resnet50": _imagenet("resnet50", "bottleneck", [3, 4, 6, 3]),
    "resnet101": _imagenet("resnet101", "bottleneck", [3, 4, 23, 3]),
    "resnet152": _imagenet("resnet152", "bottleneck", [3, 8, 36, 3]),
    "wide_resnet50_2": _imagenet("wide_resnet50_2", "bottleneck", [3, 4, 6, 3], width_per_group=128),
    "resnext50_32x4d": _imagenet("resnext50_32x4d", "bottleneck", [3, 4, 6, 3], groups=32, width_per_group=4),
    "cifar_resnet18": _cifar("cifar_resnet18", [2, 2, 2, 2], [64, 128, 256, 512], 64),
    # ResNet-50 and -152 with the CIFAR stem (3x3, stride 1, no max-pool) for
    # small images such as Fashion-MNIST's, where early exits matter most.
    "cifar_resnet50": _cifar("cifar_resnet50", [3, 4, 6, 3], [64, 128, 256, 512], 64, "bottleneck"),
    "cifar_resnet152": _cifar("cifar_resnet152", [3, 8, 36, 3], [64, 128, 256, 512], 64, "bottleneck"),
}
for _depth in (8, 20, 32, 44, 56, 110):
    _n = (_depth - 2) // 6
    ARCHS[f"resnet{_depth}"] = _cifar(f"resnet{_depth}", [_n] * 3, [16, 32, 64], 16)


def arch_for(name, in_channels=None, num_classes=None, input_size=None, mean=None, std=None):
    """Returns a copy of a named architecture with the given overrides."""
    if name not in ARCHS:
        raise SystemExit(f"unknown architecture '{name}'; valid: {', '.join(sorted(ARCHS))}")
    arch = copy.deepcopy(ARCHS[name])
    if in_channels is not None:
        arch["in_channels"] = in_channels
        if len(arch["mean"]) != in_channels:
            arch["mean"] = [arch["mean"][0]] * in_channels
            arch["std"] = [arch["std"][0]] * in_channels
    if num_classes is not None:
        arch["num_classes"] = num_classes
    if input_size is not None:
        arch["input_size"] = list(input_size)
    if mean is not None:
        arch["mean"] = list(mean)
    if std is not None:
        arch["std"] = list(std)
    return arch


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, groups=1, width_per_group=64):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, groups=1, width_per_group=64):
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class GatiResNet(nn.Module):
    """Any architecture dict, torchvision parameter names."""

    def __init__(self, arch):
        super().__init__()
        block = BasicBlock if arch["block"] == "basic" else Bottleneck
        sw = arch["stem_width"]
        if arch["stem"] == "imagenet":
            self.conv1 = nn.Conv2d(arch["in_channels"], sw, 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(arch["in_channels"], sw, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(sw)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if arch["stem"] == "imagenet" else nn.Identity()
        cin = sw
        for i, (n, planes) in enumerate(zip(arch["layers"], arch["widths"])):
            blocks = []
            for b in range(n):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(block(cin, planes, stride, arch["groups"], arch["width_per_group"]))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(arch["layers"])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, arch["num_classes"])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_reference(arch):
    """A PyTorch model for arch: torchvision's own where it exists, else GatiResNet.

    Where torchvision is not installed (some GPU machines have PyTorch alone),
    GatiResNet builds every architecture with the same parameter names.
    """
    try:
        import torchvision
    except ImportError:
        return GatiResNet(arch)
    name = arch["name"]
    if arch["stem"] == "imagenet" and hasattr(torchvision.models, name) and arch["in_channels"] == 3:
        return getattr(torchvision.models, name)(num_classes=arch["num_classes"])
    return GatiResNet(arch)


def randomize_(model, seed, calib_size=(64, 64), in_channels=3):
    """Seeded random weights with realistic, non-trivial batch-norm statistics.

    Running statistics come from a few train-mode passes over random inputs
    (so activations stay in a sane range through deep nets), then gamma, beta
    and the statistics are perturbed so folding is really exercised.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.momentum = None  # cumulative average over the calibration passes
                m.reset_running_stats()
        model.train()
        for _ in range(2):
            model(torch.randn((4, in_channels) + tuple(calib_size), generator=g))
        model.eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g) * 0.05)
                m.running_var.mul_(0.8 + 0.4 * torch.rand(m.running_var.shape, generator=g))
    return model


def arch_json(arch):
    return json.dumps(arch, separators=(",", ":"))
