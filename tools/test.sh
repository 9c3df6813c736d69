#!/usr/bin/env bash
# Sets up, builds and runs every test: the GoogleTest suites and CLI tests via
# ctest (PyTorch makes the golden outputs during the run), all of them again
# under AddressSanitizer + UBSan, the threaded API suites under
# ThreadSanitizer, and a downstream project that links gati through
# find_package.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
echo "== ctest"
(cd build && ctest --output-on-failure -j "${GATI_JOBS:-2}")

echo "== every test again under ASan + UBSan (build-asan/, CPU backend)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGATI_SANITIZE=ON -DGATI_CUDA=OFF -DGATI_BUILD_BENCH=OFF \
  >/dev/null
cmake --build build-asan -j "${GATI_JOBS:-2}"
(cd build-asan && ctest --output-on-failure -j "${GATI_JOBS:-2}")

echo "== runtime, session and server tests under ThreadSanitizer (build-tsan/)"
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGATI_TSAN=ON -DGATI_OPENMP=OFF -DGATI_CUDA=OFF \
  -DGATI_BUILD_BENCH=OFF >/dev/null
cmake --build build-tsan -j "${GATI_JOBS:-2}" --target test_runtime test_server
(cd build-tsan && TSAN_OPTIONS="halt_on_error=1" ctest --output-on-failure -R "Runtime|Session|Server")

echo "== find_package(gati) from an installed copy"
prefix=$(mktemp -d)
cmake --install build --prefix "$prefix" >/dev/null
cmake -S tests/consumer -B build/consumer -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build build/consumer -j "${GATI_JOBS:-2}" >/dev/null
./build/consumer/consumer weights/demo/fmnist_resnet20.safetensors
rm -rf "$prefix"
echo "find_package consumer: ok"
