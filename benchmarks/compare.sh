#!/usr/bin/env bash
# Compare the asv benchmarks of two commits of cbn.
#
#   benchmarks/compare.sh [BASE [HEAD]] [extra asv options...]
#   e.g. benchmarks/compare.sh main HEAD -b time_inference
#
# Each commit is built as a wheel (python -m build, meson-python) and installed in its own
# virtualenv under .asv/env; results go to .asv/results.  On main, `compare.sh main HEAD`
# compares HEAD with itself: name the base commit instead (compare.sh HEAD~1 HEAD).  Benchmarks whose ratio HEAD/BASE is
# beyond --factor (default 1.1 here) are listed, and the script exits non-zero if one got
# slower.  Run it from the repository's git checkout, with asv, virtualenv and build installed
# (pip install ".[bench]").  To compare two existing results later: asv compare BASE HEAD.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-main}
head=${2:-HEAD}
shift $(( $# < 2 ? $# : 2 ))
asv machine --yes > /dev/null
# Robust on a shared machine (#20): the two commits' rounds interleave (4 rounds each, so a
# slow spell of the neighbours hits both commits alike) and asv's statistics must find the
# difference beyond --factor.
asv continuous --factor 1.1 --split --show-stderr --interleave-rounds -a rounds=4 \
  "$base" "$head" "$@"
