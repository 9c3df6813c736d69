#!/usr/bin/env bash
# Installs what gati's build, tests and demo need (Debian packages), then
# configures and builds into build/.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
echo "== installing packages"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  cmake make g++ clang libclang-rt-14-dev pkg-config nlohmann-json3-dev libgtest-dev libbenchmark-dev libcli11-dev zlib1g-dev \
  dataset-fashion-mnist python3-torch python3-torchvision python3-matplotlib >/dev/null
echo "== configuring and building (build/)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${GATI_CMAKE_ARGS:-} >/dev/null
cmake --build build -j "${GATI_JOBS:-2}"
