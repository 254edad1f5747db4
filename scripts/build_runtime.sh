#!/usr/bin/env bash
# Configure, build and test the C++ runtime (normal build in build/, ASan+UBSan build in
# build-asan/, ThreadSanitizer build of the threaded parts in build-tsan/), install into build/install, then build and run samples/cpp against the installed
# package. Run scripts/setup_runtime.sh once first.
#
# Env: EXITC_JOBS (default: nproc), EXITC_SKIP_ASAN=1 / EXITC_SKIP_TSAN=1 to skip a sanitizer build,
#      EXITC_PYTHON (default: .venv/bin/python), EXTRA_CMAKE_ARGS (appended to both configures).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
jobs="${EXITC_JOBS:-$(nproc)}"
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
common=("${generator[@]}")
[[ -n "${EXITC_PYTHON:-}" ]] && common+=("-DEXITC_PYTHON=$EXITC_PYTHON")
# shellcheck disable=SC2206
[[ -n "${EXTRA_CMAKE_ARGS:-}" ]] && common+=($EXTRA_CMAKE_ARGS)

step() { echo; echo "=== $* ==="; }

step "build/ (RelWithDebInfo)"
cmake -S . -B build "${common[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"

if [[ "${EXITC_SKIP_ASAN:-0}" != 1 ]]; then
    step "build-asan/ (Debug, -fsanitize=address,undefined)"
    cmake -S . -B build-asan "${common[@]}" -DCMAKE_BUILD_TYPE=Debug -DEXITC_SANITIZE=ON
    cmake --build build-asan -j "$jobs"
    ctest --test-dir build-asan --output-on-failure -j "$jobs"
fi

if [[ "${EXITC_SKIP_TSAN:-0}" != 1 ]]; then
    # The code that runs on several threads: one Model shared by callers, the ContinuousBatcher's
    # worker, the C ABI, and the Triton backend (against its mock of the Triton API).
    step "build-tsan/ (RelWithDebInfo, -fsanitize=thread; threaded tests)"
    tsan_tests=(test_concurrency test_continuous test_monitor test_c_api test_triton_backend)
    cmake -S . -B build-tsan "${common[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEXITC_TSAN=ON -DEXITC_INSTALL_CXX=OFF
    cmake --build build-tsan -j "$jobs" --target "${tsan_tests[@]}"
    ctest --test-dir build-tsan --output-on-failure -j "$jobs" \
        -R "^(make_tiny_artifacts|$(IFS='|'; echo "${tsan_tests[*]}"))\$"
fi

step "install into build/install"
rm -rf build/install
cmake --install build --prefix build/install

step "samples/cpp against the installed package"
cmake -S samples/cpp -B build/sample "${generator[@]}" -DCMAKE_PREFIX_PATH="$repo_root/build/install"
cmake --build build/sample -j "$jobs"
./build/sample/exitc_classify build/runtime/tests/artifacts/tiny.exitc 8
echo
echo "build_runtime: all done"
