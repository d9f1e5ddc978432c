#!/usr/bin/env bash
# Build archipel three ways and run the whole test suite through ctest:
#   build/       normal build (RelWithDebInfo): unit, integration and chaos smoke tests
#   build-asan/  ASan+UBSan build: unit and integration tests
#   build-fuzz/  clang + libFuzzer: each fuzz target for AP_FUZZ_SECONDS (default 20)
# Runs every stage even when one fails; exits non-zero when any test failed.
set -uo pipefail
cd "$(dirname "$0")/.."

jobs=${AP_JOBS:-$(nproc)}
fuzz_seconds=${AP_FUZZ_SECONDS:-20}
status=0
summary=()

stage() {
  local name=$1; shift
  echo "=== $name"
  if "$@"; then
    summary+=("$name: ok")
  else
    summary+=("$name: FAILED")
    status=1
  fi
}

build() {
  local dir=$1; shift
  cmake -S . -B "$dir" "$@" >/dev/null && cmake --build "$dir" -j "$jobs" 2>&1 | grep -vE '^\[ *[0-9]+%\] (Building|Linking)' ; return "${PIPESTATUS[0]}"
}

stage "build (normal)" build build -DCMAKE_BUILD_TYPE=RelWithDebInfo
stage "tests (normal)" ctest --test-dir build --output-on-failure -j "$jobs"

stage "build (asan+ubsan)" build build-asan -DCMAKE_BUILD_TYPE=Debug -DAP_SANITIZE=address,undefined
stage "tests (asan+ubsan)" env ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j "$jobs" -L 'unit|integration'

stage "build (fuzz)" env CC=clang bash -c "$(declare -f build); build build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAP_FUZZ=ON -DAP_FUZZ_SECONDS=$fuzz_seconds"
stage "fuzz (${fuzz_seconds}s each)" ctest --test-dir build-fuzz --output-on-failure -j "$jobs" -L fuzz

echo "=== summary"
printf '%s\n' "${summary[@]}"
exit $status
