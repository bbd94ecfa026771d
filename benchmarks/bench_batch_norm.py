"""asv benchmarks: cbn against NumPy (``cbn.reference``) and torch, per op, shape and dtype.

Only cbn's public API is used, so that the same benchmarks run on older commits
(``asv continuous main HEAD``).  Parameters:

* ``shape``: the cases of ``python -m cbn bench``; ``32x56x56x64-nhwc`` is channels-last
  (``axis=-1``), the others have the channel at axis 1;
* ``dtype``: float32, float64;
* ``num_threads``: 1, 2 (cbn's ``num_threads`` and ``torch.set_num_threads``);
* ``impl``: ``cbn``, ``numpy`` or ``torch``.

Combinations that make no sense are skipped by raising ``NotImplementedError`` in ``setup``
(asv reports them as skipped): torch when it is not installed, and numpy with more than one
thread (``cbn.reference`` is single-threaded).

``time_*`` time one call with cbn's output preallocated (``out=``); numpy and torch allocate
theirs.  ``peakmem_*`` report the peak resident memory of the benchmark process, which
includes the input and the libraries loaded (torch only in the torch benchmarks): compare
cbn with numpy by their difference on the same shape; torch's figure includes its libraries.
"""

import numpy as np

import cbn
import cbn.reference

# torch is imported lazily, by the torch benchmarks' setup only: asv starts a new process for
# every benchmark and parameter combination, and importing torch takes over a second.
torch = None

EPS = 1e-5
MOMENTUM = 0.1

#: name -> (shape, channel axis)
SHAPES = {
    "32x64x56x56": ((32, 64, 56, 56), 1),
    "8x256x14x14": ((8, 256, 14, 14), 1),
    "1x64x112x112": ((1, 64, 112, 112), 1),
    "4096x1024": ((4096, 1024), 1),
    "256x64": ((256, 64), 1),
    "1x16x8x8": ((1, 16, 8, 8), 1),
    "32x56x56x64-nhwc": ((32, 56, 56, 64), -1),
}
#: The shapes of the peak-memory benchmarks: one NCHW, one channels-last.
PEAKMEM_SHAPES = ["32x64x56x56", "32x56x56x64-nhwc"]
DTYPES = ["float32", "float64"]
THREADS = [1, 2]
IMPLS = ["cbn", "numpy", "torch"]


def import_torch():
    """torch, or ``NotImplementedError`` (asv: skip) when it is not installed.

    Returns
    -------
    module
    """
    global torch
    if torch is None:
        try:
            import torch as _torch
        except ImportError:
            raise NotImplementedError("torch is not installed") from None
        torch = _torch
    return torch


def check_combination(impl, num_threads):
    """Raise ``NotImplementedError`` (asv: skip) for a combination not worth running.

    Parameters
    ----------
    impl : str
        ``cbn``, ``numpy`` or ``torch``.
    num_threads : int
        Threads asked for.
    """
    if impl == "numpy" and num_threads != 1:
        raise NotImplementedError("cbn.reference is single-threaded")


def make_inputs(shape, dtype, axis, with_dy=True, seed=0):
    """Random ``x`` (and ``dy``) plus per-channel parameters.

    Parameters
    ----------
    shape : tuple of int
        Shape of ``x``.
    dtype : str
        ``float32`` or ``float64``.
    axis : int
        The channel axis.
    with_dy : bool, default True
        Also draw ``dy``; when False, ``dy`` is ``x`` itself (no extra memory).
    seed : int, default 0
        Seed of the random generator.

    Returns
    -------
    dict
        ``x``, ``dy``, ``weight``, ``bias``, ``running_mean``, ``running_var``.
    """
    rng = np.random.default_rng(seed)
    C = shape[axis]
    x = rng.standard_normal(shape, dtype=dtype)
    return {
        "x": x,
        "dy": rng.standard_normal(shape, dtype=dtype) if with_dy else x,
        "weight": rng.uniform(0.5, 1.5, C).astype(dtype),
        "bias": rng.standard_normal(C).astype(dtype),
        "running_mean": np.zeros(C, dtype),
        "running_var": np.ones(C, dtype),
    }


def torch_view(arr, axis):
    """A torch tensor sharing ``arr``'s memory with the channel at dim 1.

    Channels-last arrays become channels_last-strided NCHW tensors.

    Parameters
    ----------
    arr : ndarray
        C-contiguous data.
    axis : int
        Its channel axis.

    Returns
    -------
    torch.Tensor
    """
    a = axis % arr.ndim
    t = torch.from_numpy(arr)
    if a == 1:
        return t
    return t.permute(0, a, *[i for i in range(1, arr.ndim) if i != a])


class _Calls:
    """The three ops of one implementation as zero-argument callables.

    Parameters
    ----------
    impl : str
        ``cbn``, ``numpy`` or ``torch``.
    inputs : dict
        From :func:`make_inputs`.
    axis : int
    num_threads : int
    mean, invstd : ndarray
        Saved statistics for the backward pass (float64, shape (C,)).
    preallocate : bool
        Give cbn an ``out=`` array (time benchmarks) or let it allocate (memory benchmarks).
    """

    def __init__(self, impl, inputs, axis, num_threads, mean, invstd, preallocate):
        self.forward, self.backward, self.inference = {
            "cbn": self._cbn, "numpy": self._numpy, "torch": self._torch,
        }[impl](inputs, axis, num_threads, mean, invstd, preallocate)

    @staticmethod
    def _cbn(d, axis, nt, mean, invstd, preallocate):
        out = np.empty_like(d["x"]) if preallocate else None
        x, dy, w, b = d["x"], d["dy"], d["weight"], d["bias"]
        rm, rv = d["running_mean"], d["running_var"]
        rm_f, rv_f = rm.copy(), rv.copy()

        def forward():
            cbn.batch_norm_forward(x, w, b, eps=EPS, running_mean=rm_f, running_var=rv_f,
                                   momentum=MOMENTUM, axis=axis, out=out, num_threads=nt)

        def backward():
            cbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis, out=out, num_threads=nt)

        def inference():
            cbn.batch_norm_inference(x, rm, rv, w, b, eps=EPS, axis=axis, out=out,
                                     num_threads=nt)

        return forward, backward, inference

    @staticmethod
    def _numpy(d, axis, nt, mean, invstd, preallocate):
        ref = cbn.reference
        x, dy, w, b = d["x"], d["dy"], d["weight"], d["bias"]
        rm, rv = d["running_mean"], d["running_var"]
        rm_f, rv_f = rm.copy(), rv.copy()

        def forward():
            ref.batch_norm_forward(x, w, b, eps=EPS, running_mean=rm_f, running_var=rv_f,
                                   momentum=MOMENTUM, axis=axis)

        def backward():
            ref.batch_norm_backward(dy, x, mean, invstd, w, axis=axis)

        def inference():
            ref.batch_norm_inference(x, rm, rv, w, b, eps=EPS, axis=axis)

        return forward, backward, inference

    @staticmethod
    def _torch(d, axis, nt, mean, invstd, preallocate):
        import_torch()
        torch.set_num_threads(nt)
        F, aten = torch.nn.functional, torch.ops.aten
        x, dy = torch_view(d["x"], axis), torch_view(d["dy"], axis)
        w, b, rm, rv = (torch.from_numpy(d[k]) for k in
                        ("weight", "bias", "running_mean", "running_var"))
        rm_f, rv_f = rm.clone(), rv.clone()
        dt = x.dtype
        save_mean = torch.from_numpy(np.asarray(mean)).to(dt)
        save_invstd = torch.from_numpy(np.asarray(invstd)).to(dt)
        mask = [True, True, True]

        def forward():
            F.batch_norm(x, rm_f, rv_f, w, b, True, MOMENTUM, EPS)

        def backward():
            aten.native_batch_norm_backward(dy, x, w, rm, rv, save_mean, save_invstd, True,
                                            EPS, mask)

        def inference():
            F.batch_norm(x, rm, rv, w, b, False, MOMENTUM, EPS)

        return forward, backward, inference


class TimeBatchNorm:
    """Time per call of the training forward, the backward and inference."""

    params = [list(SHAPES), DTYPES, THREADS, IMPLS]
    param_names = ["shape", "dtype", "num_threads", "impl"]
    # Keep a full (non --quick) run to minutes: at most 5 samples or ~4 s per benchmark.
    repeat = (2, 5, 4.0)
    warmup_time = 0.05
    timeout = 120

    def setup(self, shape, dtype, num_threads, impl):
        """Draw the inputs, the saved statistics and cbn's output buffer; warm up."""
        check_combination(impl, num_threads)
        if impl == "torch":
            import_torch()
        shp, axis = SHAPES[shape]
        d = make_inputs(shp, dtype, axis)
        _, mean, invstd = cbn.batch_norm_forward(d["x"], d["weight"], d["bias"], eps=EPS,
                                                 axis=axis)
        self.calls = _Calls(impl, d, axis, num_threads, mean, invstd, preallocate=True)
        self.calls.inference()  # warm up: page in cbn's output, start the thread pools

    def time_forward(self, shape, dtype, num_threads, impl):
        """Training forward pass (batch statistics, running statistics updated)."""
        self.calls.forward()

    def time_backward(self, shape, dtype, num_threads, impl):
        """Backward pass: dx, dweight and dbias."""
        self.calls.backward()

    def time_inference(self, shape, dtype, num_threads, impl):
        """Inference with the running statistics."""
        self.calls.inference()


class PeakMemBatchNorm:
    """Peak resident memory of one call (cbn allocates its output here, like the others)."""

    params = [PEAKMEM_SHAPES, DTYPES, [1], IMPLS]
    param_names = ["shape", "dtype", "num_threads", "impl"]
    timeout = 120

    def setup(self, shape, dtype, num_threads, impl):
        """Draw the input only (no output buffers: the calls allocate)."""
        check_combination(impl, num_threads)
        if impl == "torch":
            import_torch()
        shp, axis = SHAPES[shape]
        # dy is x itself and the statistics are constants: setup allocates one array only,
        # so that the peak is the input plus what the call itself needs.
        d = make_inputs(shp, dtype, axis, with_dy=False)
        C = shp[axis]
        mean, invstd = np.zeros(C), np.ones(C)
        self.calls = _Calls(impl, d, axis, num_threads, mean, invstd, preallocate=False)

    def peakmem_forward(self, shape, dtype, num_threads, impl):
        """Training forward pass."""
        self.calls.forward()

    def peakmem_backward(self, shape, dtype, num_threads, impl):
        """Backward pass (all three gradients)."""
        self.calls.backward()

    def peakmem_inference(self, shape, dtype, num_threads, impl):
        """Inference."""
        self.calls.inference()


class TimeHalfPrecision:
    """The 16-bit formats: float16 (and bfloat16 with ml_dtypes) data with float32 parameters
    and statistics, cbn against torch's CPU batch norm on the same format, at 2 threads, on
    the big NCHW shape, the NC shape and channels-last."""

    params = [["32x64x56x56", "4096x1024", "32x56x56x64-nhwc"], ["float16", "bfloat16"],
              ["cbn", "torch"]]
    param_names = ["shape", "dtype", "impl"]
    repeat = (2, 5, 4.0)
    warmup_time = 0.05
    timeout = 120

    def setup(self, shape, dtype, impl):
        """Draw float32 inputs, round them to the format; warm up."""
        if dtype == "bfloat16":
            try:
                import ml_dtypes
            except ImportError:
                raise NotImplementedError("bfloat16 needs ml_dtypes") from None
            dt = np.dtype(ml_dtypes.bfloat16)
        else:
            dt = np.dtype(np.float16)
        shp, axis = SHAPES[shape]
        d = make_inputs(shp, "float32", axis)
        x, dy = d["x"].astype(dt), d["dy"].astype(dt)
        w, b, rm, rv = (d[k] for k in ("weight", "bias", "running_mean", "running_var"))
        _, mean, invstd = cbn.batch_norm_forward(x, w, b, eps=EPS, axis=axis)
        if impl == "torch":
            import_torch()
            torch.set_num_threads(2)
            tdt = torch.bfloat16 if dtype == "bfloat16" else torch.float16

            def tensor(a):
                return torch.from_numpy(a.astype(np.float32)).to(tdt)
            xt = tensor(x) if axis == 1 else tensor(x).permute(0, 3, 1, 2)
            dyt = tensor(dy) if axis == 1 else tensor(dy).permute(0, 3, 1, 2)
            tw, tb, trm, trv = (torch.from_numpy(a) for a in (w, b, rm, rv))
            sm = torch.from_numpy(np.asarray(mean, np.float32))
            si = torch.from_numpy(np.asarray(invstd, np.float32))
            F, aten = torch.nn.functional, torch.ops.aten
            self.forward = lambda: F.batch_norm(xt, trm.clone(), trv.clone(), tw, tb, True,
                                                MOMENTUM, EPS)
            self.backward = lambda: aten.native_batch_norm_backward(
                dyt, xt, tw, trm, trv, sm, si, True, EPS, [True, True, True])
            self.inference = lambda: F.batch_norm(xt, trm, trv, tw, tb, False, MOMENTUM, EPS)
            dims = (0, 2, 3) if xt.dim() == 4 else (0,)
            self.moments = lambda: torch.var_mean(xt, dim=dims, unbiased=False)
        else:
            y = np.empty_like(x)
            self.moments = lambda: cbn.moments(x, axis=axis, num_threads=2)
            rmc, rvc = rm.copy(), rv.copy()
            self.forward = lambda: cbn.batch_norm_forward(
                x, w, b, eps=EPS, running_mean=rmc, running_var=rvc, momentum=MOMENTUM,
                axis=axis, out=y, num_threads=2)
            self.backward = lambda: cbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis,
                                                            out=y, num_threads=2)
            self.inference = lambda: cbn.batch_norm_inference(x, rm, rv, w, b, eps=EPS,
                                                              axis=axis, out=y, num_threads=2)
        self.inference()

    def time_forward(self, shape, dtype, impl):
        """Training forward pass."""
        self.forward()

    def time_backward(self, shape, dtype, impl):
        """Backward pass: dx, dweight and dbias."""
        self.backward()

    def time_inference(self, shape, dtype, impl):
        """Inference with the running statistics."""
        self.inference()

    def time_moments(self, shape, dtype, impl):
        """The statistics alone (cbn: the two-level sums; torch: var_mean)."""
        self.moments()


class TimeMasked:
    """Masked and weighted training forward (and backward) at 2 threads, float32, against the
    unmasked forward on the same data: the big NCHW shape with an 80% per-position mask and
    padded sequences (64, 512, 256) channels-last with an (N, T) mask of random lengths.
    ``kind``: ``none`` (unmasked), ``mask``, ``weights`` (per-position floats)."""

    params = [["32x64x56x56", "64x512x256-seq"], ["none", "mask", "weights"]]
    param_names = ["shape", "kind"]
    repeat = (2, 5, 4.0)
    warmup_time = 0.05
    timeout = 120

    def setup(self, shape, kind):
        """Draw the inputs and the mask or weights; warm up."""
        import inspect
        if "mask" not in inspect.signature(cbn.batch_norm_forward).parameters:
            raise NotImplementedError("this cbn has no masked statistics")  # older commits
        shp, axis = ((32, 64, 56, 56), 1) if shape == "32x64x56x56" else ((64, 512, 256), -1)
        d = make_inputs(shp, "float32", axis)
        rng = np.random.default_rng(1)
        x, dy, w, b = d["x"], d["dy"], d["weight"], d["bias"]
        if axis == -1:
            lengths = rng.integers(shp[1] // 2, shp[1] + 1, shp[0])
            mask = np.arange(shp[1])[None, :] < lengths[:, None]
        else:
            mask = rng.random((shp[0],) + shp[2:]) < 0.8
        kw = {"none": {}, "mask": {"mask": mask},
              "weights": {"sample_weight": rng.uniform(0, 2, mask.shape).astype(np.float32)}}[kind]
        y = np.empty_like(x)
        rm, rv = d["running_mean"].copy(), d["running_var"].copy()
        _, mean, invstd = cbn.batch_norm_forward(x, w, b, eps=EPS, axis=axis, **kw)
        self.forward = lambda: cbn.batch_norm_forward(
            x, w, b, eps=EPS, running_mean=rm, running_var=rv, momentum=MOMENTUM, axis=axis,
            out=y, num_threads=2, **kw)
        self.backward = lambda: cbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis,
                                                        out=y, num_threads=2, **kw)
        self.forward()

    def time_forward(self, shape, kind):
        """Training forward pass."""
        self.forward()

    def time_backward(self, shape, kind):
        """Backward pass: dx, dweight and dbias."""
        self.backward()
