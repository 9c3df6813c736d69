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
(cd build-tsan && TSAN_OPTIONS="halt_on_error=1" ctest --output-on-failure -R "Runtime|Session|Server|PerSampleExits")

if command -v clang++ >/dev/null && [ -f "$(clang++ -print-resource-dir)/lib/linux/libclang_rt.fuzzer-x86_64.a" ]; then
  echo "== each reader fuzzed for ${GATI_FUZZ_SECONDS:-10} s (build-fuzz/, clang + libFuzzer + ASan/UBSan)"
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGATI_FUZZ=ON -DGATI_CUDA=OFF \
    -DGATI_OPENMP=OFF -DGATI_BUILD_TESTS=OFF -DGATI_BUILD_BENCH=OFF >/dev/null
  cmake --build build-fuzz -j "${GATI_JOBS:-2}" --target fuzz_safetensors fuzz_model fuzz_cache fuzz_trace fuzz_idx \
    fuzz_config fuzz_seeds
  corpus=build-fuzz/corpus
  rm -rf "$corpus"
  ./build-fuzz/tests/fuzz/fuzz_seeds "$corpus"
  mkdir -p "$corpus/model"
  /usr/bin/python3 tests/fuzz/make_model_seed.py "$corpus/model/tiny.safetensors"
  cp "$corpus/model/tiny.safetensors" "$corpus/safetensors/"
  for t in safetensors model cache trace idx config; do
    ./build-fuzz/tests/fuzz/fuzz_$t -max_total_time="${GATI_FUZZ_SECONDS:-10}" -artifact_prefix=build-fuzz/ \
      "$corpus/$t" 2>&1 | tail -n 1 | sed "s/^/fuzz_$t: /"
  done
else
  echo "== clang++ or its libFuzzer runtime not found: the fuzz targets are not built (apt-get install clang libclang-rt-14-dev)"
fi

echo "== find_package(gati) from an installed copy"
prefix=$(mktemp -d)
cmake --install build --prefix "$prefix" >/dev/null
cmake -S tests/consumer -B build/consumer -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build build/consumer -j "${GATI_JOBS:-2}" >/dev/null
./build/consumer/consumer weights/demo/fmnist_resnet20.safetensors
rm -rf "$prefix"
echo "find_package consumer: ok"
