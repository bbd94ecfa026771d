"""Build configuration: ``cbn.show_config()`` / ``python -m cbn info``, and the SIMD level
chosen at import (``CBN_SIMD`` caps it).  Thread controls are in tests/system/test_threads.py,
the run from the source checkout in tests/system/test_packaging.py, the compiled variants in
tests/kernels/test_variants.py."""

import os
import subprocess
import sys

import pytest

import cbn
from cbn import _dispatch
from cbn._dispatch import kernels as k


def test_show_config_and_info_command(capsys, tmp_path):
    cbn.show_config()
    text = capsys.readouterr().out
    for field in ("cbn", "simd level", "openmp", "default threads", "compiler", "kernel c_args"):
        assert field in text
    # subprocesses run outside the source tree, so they import the installed package
    out = subprocess.run([sys.executable, "-m", "cbn", "info"], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert f"cbn {cbn.__version__}" in out and "simd level" in out


def test_simd_level_is_the_best_supported_and_can_be_capped(tmp_path):
    from cbn import _build_info

    best = next(v for v in _dispatch.LEVELS if v in _build_info.VARIANTS and k.cpu_supports(v))
    if os.environ.get("CBN_SIMD"):
        pytest.skip("CBN_SIMD is set for this run")
    assert _dispatch.level == best
    assert k.variant() == best
    for cap in ("baseline", "avx2"):
        code = "import cbn; print(cbn.config()['simd_level'])"
        env = dict(os.environ, CBN_SIMD=cap)
        res = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env,
                             capture_output=True, text=True, check=True, cwd=tmp_path)
        level = res.stdout.strip()
        allowed = _dispatch.LEVELS[_dispatch.LEVELS.index(cap):]
        assert level in allowed
        if cap in _build_info.VARIANTS and k.cpu_supports(cap):
            assert level == cap
    bad = subprocess.run([sys.executable, "-c", "import cbn"], env=dict(os.environ, CBN_SIMD="sse9"),
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and "CBN_SIMD='sse9' is not a SIMD level" in bad.stderr
