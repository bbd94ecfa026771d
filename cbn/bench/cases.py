"""The cases: ops, dtypes and shapes of the case list, the :class:`Case` record, and the random
inputs of a case, shared by every implementation timed on it."""

import math
from dataclasses import dataclass

import numpy as np

#: The fused ops (a residual added and an activation in the same pass), timed on the float32
#: cases only (the deployment dtype), in report order after the plain ops.
FUSED_OPS = ("inference_add_relu", "forward_add_relu", "inference_silu", "backward_add_relu")
#: The ops, in report order: ``frozen`` is the deployment path, the frozen layer
#: (:class:`cbn.FrozenBatchNorm`) against the peers' kernels with precomputed coefficients.
#: Masked and weighted training forwards (#18): a per-position mask (padded sequences on the
#: (N, T, C) case, 80% random positions elsewhere) and per-position weights.
MASKED_OPS = ("forward_masked", "forward_weighted")
OPS = ("forward", "backward", "inference", "frozen") + FUSED_OPS + MASKED_OPS
#: The arrays of x's size each op reads or writes in full (the thread-scaling footprint).
ARRAYS = {"forward": 2, "backward": 3, "inference": 2, "frozen": 2, "inference_add_relu": 3,
          "forward_add_relu": 3, "inference_silu": 2, "backward_add_relu": 5,
          "forward_masked": 2, "forward_weighted": 2}


def applies(op, case):
    """Whether ``op`` runs on ``case``: the fused ops on float32; the masked ones (float32 and
    float64) on the big NCHW shape and on padded sequences (N, T, C), 3-D channels-last cases,
    which only the training forward shares (to compare in one run)."""
    if is_sequence(case):
        return op == "forward" or (op in MASKED_OPS and case.dtype in ("float32", "float64"))
    if op in MASKED_OPS:
        return case.shape == SHAPES[0][0] and case.dtype in ("float32", "float64")
    return op not in FUSED_OPS or case.dtype == "float32"


def is_sequence(case):
    """A padded-sequence case: (N, T, C) with the channels last."""
    return len(case.shape) == 3 and case.channel_axis == 2


#: The dtypes a case can have: the 16-bit formats (``bfloat16`` needs ml_dtypes) on
#: :data:`HALF_SHAPES` only, with float32 parameters and statistics (as torch runs them).
DTYPES = ("float32", "float64", "float16", "bfloat16")
#: The dtypes of the default case list (``bfloat16`` left out when ml_dtypes is missing).
DEFAULT_DTYPES = DTYPES
HALF_DTYPES = ("float16", "bfloat16")


def numpy_dtype(name):
    """The NumPy dtype of a case's dtype name (``bfloat16``: ml_dtypes'; ImportError without
    it)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def available(name):
    """Whether a dtype can run here (``bfloat16`` needs ml_dtypes)."""
    try:
        numpy_dtype(name)
    except ImportError:
        return False
    return True

#: (shape, channel axis) of the full case list: NCHW, 2-D NC, tiny, channels-last NHWC (also
#: the wide-channel late stages of a ResNet, 256 and 512 channels from L2), padded sequences.
SHAPES = (
    ((32, 64, 56, 56), 1),
    ((8, 256, 14, 14), 1),
    ((1, 64, 112, 112), 1),
    ((4096, 1024), 1),
    ((256, 64), 1),
    ((1, 16, 8, 8), 1),
    ((32, 56, 56, 64), -1),
    ((64, 512, 256), -1),
    ((64, 14, 14, 256), -1),
    ((64, 7, 7, 512), -1),
)
#: Indices into :data:`SHAPES` used by ``--quick``: big NCHW, in-cache NCHW (for the
#: thread-scaling table), 2-D NC, tiny, channels-last, padded sequences.
QUICK_SHAPES = (0, 1, 3, 5, 6, 7)
#: Indices into :data:`SHAPES` of the 16-bit cases: big NCHW, 2-D NC, channels-last.
HALF_SHAPES = (0, 3, 6)


@dataclass(frozen=True)
class Case:
    """One input configuration.

    Attributes
    ----------
    shape : tuple of int
        Shape of ``x``.
    dtype : str
        One of :data:`DTYPES`.
    axis : int
        The channel axis (``-1`` for channels-last).
    """

    shape: tuple
    dtype: str = "float32"
    axis: int = 1

    @property
    def nbytes(self):
        """Bytes of one array of this case (``x``)."""
        return math.prod(self.shape) * numpy_dtype(self.dtype).itemsize

    @property
    def channel_axis(self):
        """The channel axis as a non-negative index."""
        return self.axis % len(self.shape)

    @property
    def channels(self):
        """Number of channels C."""
        return self.shape[self.channel_axis]

    @property
    def shape_label(self):
        """The shape written ``32x64x56x56``."""
        return "x".join(str(s) for s in self.shape)

    @property
    def label(self):
        """Short description, e.g. ``32x64x56x56 float32 axis=1``."""
        return f"{self.shape_label} {self.dtype} axis={self.axis}"


def default_cases(quick=False, dtypes=DEFAULT_DTYPES):
    """The benchmark's case list.

    Parameters
    ----------
    quick : bool, default False
        Only the shapes :data:`QUICK_SHAPES`.
    dtypes : sequence of str, default :data:`DEFAULT_DTYPES`
        The dtypes to include; the 16-bit formats on :data:`HALF_SHAPES` only, and those that
        cannot run here (``bfloat16`` without ml_dtypes) left out.

    Returns
    -------
    list of Case
    """
    picked = QUICK_SHAPES if quick else range(len(SHAPES))
    out = []
    for dtype in dtypes:
        if not available(dtype):
            continue
        for i in picked:
            if (dtype not in HALF_DTYPES or i in HALF_SHAPES) and (
                    dtype in ("float32", "float64") or len(SHAPES[i][0]) != 3):
                out.append(Case(tuple(SHAPES[i][0]), dtype, SHAPES[i][1]))
    return out


@dataclass
class CaseData:
    """Inputs of one case, shared by all implementations."""

    x: np.ndarray
    dy: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    residual: np.ndarray
    mask: np.ndarray
    sample_weight: np.ndarray


def make_data(case, seed=0):
    """Random inputs for ``case`` (normal data and residual, weight near 1, running var 1;
    the parameters and statistics of a 16-bit case in float32)."""
    rng = np.random.default_rng(seed)
    dt = numpy_dtype(case.dtype)
    pt = np.dtype(np.float32) if case.dtype in HALF_DTYPES else dt
    C = case.channels

    def data():
        return rng.standard_normal(case.shape, dtype=np.float32).astype(dt) \
            if case.dtype in HALF_DTYPES else rng.standard_normal(case.shape, dtype=dt)
    return CaseData(
        x=data(),
        dy=data(),
        weight=rng.uniform(0.5, 1.5, C).astype(pt),
        bias=rng.standard_normal(C).astype(pt),
        running_mean=np.zeros(C, pt),
        running_var=np.ones(C, pt),
        residual=data(),
        mask=_mask(rng, case),
        sample_weight=rng.uniform(0.0, 2.0, _positions(case)).astype(pt),
    )


def _positions(case):
    a = case.channel_axis
    return case.shape[:a] + case.shape[a + 1:]


def _mask(rng, case):
    """A per-position mask: sequences of random lengths (half to all of T) padded at the end
    for (N, T, C); 80% random positions otherwise."""
    if is_sequence(case):
        N, T = case.shape[0], case.shape[1]
        lengths = rng.integers(T // 2, T + 1, N)
        return np.arange(T)[None, :] < lengths[:, None]
    return rng.random(_positions(case)) < 0.8
