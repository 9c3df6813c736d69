#!/usr/bin/python3
"""Writes a tiny random-weight model (a 15 KB resnet8, 1x8x8 input, 3 classes)
as the seed of the model-file fuzzer:  make_model_seed.py OUT.safetensors"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import convert  # noqa: E402
import gati_models  # noqa: E402

ARCH = {"name": "resnet8", "block": "basic", "layers": [1, 1, 1], "widths": [4, 8, 8], "stem": "cifar",
        "stem_width": 4, "groups": 1, "width_per_group": 64, "in_channels": 1, "input_size": [8, 8],
        "num_classes": 3, "mean": [0.5], "std": [0.25]}

model = gati_models.randomize_(gati_models.build_reference(ARCH), seed=1, calib_size=(8, 8), in_channels=1)
convert.write_model(ARCH, model.state_dict(), sys.argv[1])
