"""Build configuration, OpenMP really in use, thread controls, SIMD dispatch."""

import os
import subprocess
import sys

import numpy as np
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


def test_openmp_is_built_in_and_threads_are_really_used():
    cfg = cbn.config()
    assert cfg["openmp"], "our builds must have OpenMP (meson found no OpenMP?)"
    x = np.ones((8, 64, 40, 40), np.float32)
    rm, rv = np.zeros(64), np.ones(64)
    for threads in (1, 2):
        for run in (lambda: cbn.batch_norm_forward(x, num_threads=threads),
                    lambda: cbn.batch_norm_inference(x, rm, rv, num_threads=threads),
                    lambda: cbn.batch_norm_backward(x, x, rm, rv, num_threads=threads)):
            k.last_team_size(reset=True)
            run()
            assert k.last_team_size() == threads


@pytest.mark.skipif(k.max_threads() < 2 or (os.cpu_count() or 1) < 2, reason="needs 2 threads")
@pytest.mark.parametrize("shape", [(1, 1, 300000), (1, 1, 600, 600), (2, 1, 200000),
                                   (300000, 1), (2, 150000)])
def test_few_channels_and_samples_still_use_the_threads(shape):
    """A single long channel (one run) is split into pieces: 2 threads really run, and the
    results equal the 1-thread ones bit for bit."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    C = shape[1]
    rm, rv = np.zeros(C), np.ones(C)
    results = {}
    for threads in (1, 2):
        res = []
        for run in (lambda: cbn.batch_norm_forward(x, num_threads=threads),
                    lambda: cbn.batch_norm_inference(x, rm, rv, num_threads=threads),
                    lambda: cbn.batch_norm_backward(x, x, rm, rv, num_threads=threads)):
            k.last_team_size(reset=True)
            res.append(run())
            assert k.last_team_size() == threads
        results[threads] = res
    f1, i1, b1 = results[1]
    f2, i2, b2 = results[2]
    for a, b in zip(list(f1) + [i1] + list(b1), list(f2) + [i2] + list(b2)):
        np.testing.assert_array_equal(a, b)


def test_small_inputs_do_not_start_a_thread_team():
    x = np.ones((2, 16, 8, 8), np.float32)
    k.last_team_size(reset=True)
    cbn.batch_norm_forward(x, num_threads=2)
    assert k.last_team_size() == 1


def test_threadpoolctl_limits_are_honoured():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    x = np.ones((8, 64, 40, 40), np.float32)
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert k.max_threads() == 1
        k.last_team_size(reset=True)
        cbn.batch_norm_forward(x)
        assert k.last_team_size() == 1
    k.last_team_size(reset=True)
    cbn.batch_norm_forward(x)
    assert k.last_team_size() == min(2, os.cpu_count() or 1) or k.max_threads() == 1


def test_omp_num_threads_environment_variable(tmp_path):
    code = ("import numpy as np, cbn; from cbn._dispatch import kernels as k; "
            "cbn.batch_norm_forward(np.ones((8, 64, 40, 40), np.float32)); "
            "print(cbn.config()['default_threads'], k.last_team_size())")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout.split()
    assert out == ["1", "1"]


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


@pytest.mark.parametrize("variant", ["baseline", "avx2", "avx512"])
def test_every_built_variant_gives_the_same_answer(rng, variant):
    """Each compiled SIMD variant agrees with the dispatched one (to rounding: FMA contraction
    differs between instruction sets)."""
    from cbn import _build_info

    if variant not in _build_info.VARIANTS:
        pytest.skip(f"{variant} not built")
    if not k.cpu_supports(variant):
        pytest.skip(f"CPU lacks {variant}")
    x = rng.standard_normal((6, 5, 300)).astype(np.float32) + 3
    mean, m2 = np.empty(5), np.empty(5)
    y = np.empty_like(x)
    with _dispatch.use_level(variant):
        assert k.variant() == variant
        k.moments(x, 6, 5, 300, mean, m2, 0)
        k.inference(x, y, 6, 5, 300, mean, 1 / np.sqrt(m2 / 1800), np.zeros(5), 0)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=1e-14)
    np.testing.assert_allclose(m2, x64.var(axis=(0, 2)) * 1800, rtol=1e-12)
    np.testing.assert_allclose(y, (x64 - mean[:, None]) / np.sqrt(m2[:, None] / 1800), atol=1e-5)


def test_stream_kernels_check_their_arrays():
    a = np.ones(100, np.float32)
    with pytest.raises(ValueError):
        k.stream_scale(a, np.empty(50, np.float32), 1)
    with pytest.raises(ValueError):
        k.stream_triad(a, np.ones(100), np.empty(100, np.float32), 1)
    with pytest.raises(TypeError):
        k.stream_sum(np.ones(10, np.int64), 1)
    with pytest.raises(ValueError):
        k.stream_sum(np.ones(20)[::2], 1)
    out = np.empty_like(a)
    k.stream_scale(a, out, 1)
    np.testing.assert_array_equal(out, 3.0)
    assert k.stream_sum(a, 2) == 100.0
