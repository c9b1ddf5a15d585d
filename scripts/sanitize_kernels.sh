#!/usr/bin/env bash
# Run tests with the C kernels built under AddressSanitizer and UndefinedBehaviorSanitizer.
#
#   bash scripts/sanitize_kernels.sh                # kernel, model-route, fine-tune tests (~5 min)
#   bash scripts/sanitize_kernels.sh tests -x       # the whole suite (~14 min on 2 cores)
#
# Why: a kernel that reads past the end of a tensor usually reads harmless numbers, and
# only sometimes NaN (memory freed by earlier work), so the bug shows as rare NaN losses in
# long runs and never in a unit test. The sanitizers report the first such access at once.
#
# How: the package is copied (symlinks followed) to a temporary folder and its kernels are
# built there with -fsanitize=address,undefined; pytest then runs from the repository (so
# ../shared/data is found) with that copy first on PYTHONPATH and the sanitizer runtimes
# preloaded. Python and torch are not instrumented: what is checked is every memory access
# of our kernels.
# Arguments are passed to pytest. A report stops the run, is printed, and fails the script.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
command -v gcc > /dev/null || { echo "sanitize_kernels.sh: needs gcc" >&2; exit 2; }
asan="$(gcc -print-file-name=libasan.so)"
ubsan="$(gcc -print-file-name=libubsan.so)"
for lib in "$asan" "$ubsan"; do
    [[ -f "$lib" ]] || { echo "sanitize_kernels.sh: $lib not found (install gcc's sanitizer runtimes)" >&2; exit 2; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/logs"
cp -rL "$root/forcefield" "$root/setup.py" "$root/pyproject.toml" "$work/src/"
find "$work/src/forcefield" -name '*.so' -delete
(cd "$work/src" && CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -g" \
    LDFLAGS="-fsanitize=address,undefined" python setup.py -q build_ext --inplace > "$work/build.log" 2>&1) \
    || { cat "$work/build.log" >&2; echo "sanitize_kernels.sh: the build failed" >&2; exit 2; }

export PYTHONPATH="$work/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONSAFEPATH=1  # `python -m` must not put the repository (uninstrumented) first
export LD_PRELOAD="$asan $ubsan"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:log_path=$work/logs/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$work/logs/ubsan"

# refuse to pass vacuously: the copy, with both kernels, must be what the tests import
python - "$work/src" <<'EOF'
import sys
import forcefield
from forcefield.so3 import conv_kernel, grid_kernel  # both load forcefield/ops/_C
if not forcefield.__file__.startswith(sys.argv[1]):
    sys.exit(f"sanitize_kernels.sh: imported {forcefield.__file__}, not the sanitized copy")
if not (conv_kernel.available() and grid_kernel.available()):
    sys.exit("sanitize_kernels.sh: the sanitized kernels did not load")
EOF

if [[ $# -eq 0 ]]; then
    set -- tests/test_fused_conv.py tests/test_fused_powers.py tests/test_so3_kernel.py \
        tests/test_edge_pairs.py tests/test_model_routes.py tests/test_finetune.py
fi
status=0
(cd "$root" && python -m pytest -q -p no:cacheprovider "$@") || status=$?
if compgen -G "$work/logs/*" > /dev/null; then
    cat "$work"/logs/* >&2
    echo "sanitize_kernels.sh: the sanitizers reported the errors above" >&2
    exit 1
fi
exit "$status"
