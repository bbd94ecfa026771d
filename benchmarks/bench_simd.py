"""asv benchmarks: every compiled SIMD variant of the kernels on the same calls.

cbn runs the best variant the CPU supports, so the dashboard's other benchmarks never see the
others, and a variant can fall far behind unnoticed: until November 2026 the AVX2 and SSE2
builds kept every 64-byte vector on the stack (GCC has no registers for them there), and their
backward ran 5-10x slower than AVX-512's.  These time each variant the CPU can run through the
fast entry points (the ones ``batch_norm_*`` call with ``out=``) bound to it, one thread, so
that the variants can be compared with each other on one machine.  Parameters: ``shape`` (as in
bench_batch_norm), ``dtype``, ``level`` (``baseline``, ``avx2``, ``avx512``; skipped when not
built or not supported by the CPU, and on commits without these entry points).
"""

import importlib

import numpy as np

SHAPES = {
    "8x256x14x14": ((8, 256, 14, 14), 1),
    "4096x1024": ((4096, 1024), 1),
    "32x56x56x64-nhwc": ((32, 56, 56, 64), -1),
}
LEVELS = ["baseline", "avx2", "avx512"]
DTYPES = ["float32", "float64"]


def _entries_of(level):
    """The fast entry points running at ``level``: bound through cbn._dispatch (since the
    compile-once split), or the level's own module (commits before it)."""
    from cbn import _dispatch

    if hasattr(_dispatch, "bind"):
        if level not in _dispatch.supported_levels():
            raise NotImplementedError(f"{level}: not built or not supported by the CPU")
        _dispatch.bind(level)
        return _dispatch.kernels
    try:
        mod = importlib.import_module(f"cbn._kernels_{level}")
        base = importlib.import_module("cbn._kernels_baseline")
    except ImportError:
        raise NotImplementedError(f"{level} kernels not built") from None
    if not all(hasattr(mod, f) for f in ("fast_forward", "fast_backward", "fast_inference")):
        raise NotImplementedError("no fast entry points in this commit")
    if not base.cpu_supports(level):
        raise NotImplementedError(f"the CPU lacks {level}")
    return mod


class SimdLevels:
    """forward, backward and inference through one kernel variant."""

    params = (list(SHAPES), DTYPES, LEVELS)
    param_names = ["shape", "dtype", "level"]
    timeout = 120

    def setup(self, shape, dtype, level):
        from cbn import _dispatch

        self._dispatched = getattr(_dispatch, "level", None)
        mod = _entries_of(level)
        dims, axis = SHAPES[shape]
        rng = np.random.default_rng(0)
        x = (rng.standard_normal(dims) * 2 + 3).astype(dtype)
        dy = rng.standard_normal(dims).astype(dtype)
        C = dims[axis]
        w = rng.uniform(0.5, 1.5, C).astype(dtype)
        b = rng.standard_normal(C).astype(dtype)
        rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
        y = np.empty_like(x)
        dx = np.empty_like(x)
        fwd = mod.fast_forward(x, w, b, 1e-5, None, None, 0.1, axis, 1, y, False, False)
        if fwd is None:
            raise NotImplementedError("not a fast-path case")
        mean, invstd = fwd[1], fwd[2]
        self.forward = lambda: mod.fast_forward(x, w, b, 1e-5, None, None, 0.1, axis, 1, y,
                                                False, False)
        self.backward = lambda: mod.fast_backward(dy, x, mean, invstd, w, axis, 1, dx, None)
        self.inference = lambda: mod.fast_inference(x, rm, rv, w, b, 1e-5, axis, 1, y, False)
        for call in (self.backward, self.inference):
            if call() is None:
                raise NotImplementedError("not a fast-path case")

    def teardown(self, shape, dtype, level):
        from cbn import _dispatch

        if hasattr(_dispatch, "bind"):
            _dispatch.bind(self._dispatched)

    def time_forward(self, shape, dtype, level):
        self.forward()

    def time_backward(self, shape, dtype, level):
        self.backward()

    def time_inference(self, shape, dtype, level):
        self.inference()
