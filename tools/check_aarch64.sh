#!/usr/bin/env bash
# Portability check (#20): the kernels' C compiles for aarch64, so no x86-only code escapes its
# guards.  Compiles every kernel family for all four element types (cbn_kernels.h, -Werror) and
# checks the syntax of the Cython-generated C of the kernel module and of _core with the host's
# Python and NumPy headers.  Needs a cross compiler: apt-get install gcc-aarch64-linux-gnu.
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${CC_AARCH64:-aarch64-linux-gnu-gcc}
if ! command -v "$CC" >/dev/null; then
  echo "check_aarch64: no $CC (apt-get install gcc-aarch64-linux-gnu)" >&2
  exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '#include "cbn_kernels.h"\n' > "$tmp/families.c"
"$CC" -std=gnu11 -O2 -fopenmp -fno-math-errno -fno-trapping-math -ffp-contract=fast \
  -Wall -Wno-unused-function -Werror -Isrc -c "$tmp/families.c" -o "$tmp/families.o"
py_inc=$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
np_inc=$(python -c 'import numpy; print(numpy.get_include())')
for m in _kernels _core; do
  python -m cython -3 -I src -o "$tmp/$m.c" "src/$m.pyx"
  "$CC" -std=gnu11 -fsyntax-only -fopenmp -DNPY_NO_DEPRECATED_API=NPY_1_7_API_VERSION \
    -DCYTHON_CCOMPLEX=0 -DCBN_VARIANT='"baseline"' -Wno-unused-function -Isrc -I"$py_inc" \
    -I"$np_inc" "$tmp/$m.c"
done
echo "check_aarch64: the kernel families and the generated C of _kernels and _core compile for aarch64"
