"""Packaging: run from the source checkout, Python must use the installed (compiled)
package, not the uncompiled cbn/ folder."""

import os
import subprocess
import sys

import pytest

from cbn import _dispatch


def test_main_job_runs_from_the_repository_root():
    # README: "pip install . && python -m cbn bench" is typed in the checkout, where Python
    # finds the uncompiled cbn/ folder first; it must defer to the installed package
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isfile(os.path.join(root, "cbn", "__init__.py")):
        pytest.skip("not run from a source checkout")
    code = ("import cbn; print(cbn._dispatch.level); "
            "print(cbn.batch_norm_inference(cbn.reference.np.ones((2, 3)), "
            "[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]).sum())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=root).stdout.split()
    assert out[0] in _dispatch.LEVELS and abs(float(out[1]) - 6 / (1 + 1e-5) ** 0.5) < 1e-6
    out = subprocess.run([sys.executable, "-m", "cbn", "info"], capture_output=True, text=True,
                         check=True, cwd=root).stdout
    assert "simd level" in out
