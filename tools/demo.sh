#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, then classify the
# Fashion-MNIST test split with the committed demo model (CPU backend when
# there is no GPU), and show the per-layer profile.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
model=weights/demo/fmnist_resnet20.safetensors
./build/gati info "$model"
./build/gati run --model "$model" --data fashion-mnist --split test --batch 1
./build/gati profile --model "$model" --batch 1 --repeats 50 --json build/profile.json --trace build/profile.trace.json
