"""Argument checks and layout handling shared by the public functions: the Python route.

A public function first offers its arguments to a C fast path (``fast_forward``,
``fast_inference``, ``fast_backward`` in src/_core.pyx), which only *recognises* canonical input
and returns None for anything else; the Python route then decides, with the checks here.

Where each rule lives (design (a) of the "one home for every argument rule" issue): every
*value* rule -- eps finite and > 0, momentum in [0, 1] and read only with a running statistic,
the thread count and its cap, the number of dimensions, the channel axis and the
``(outer, C, inner)`` view, the batch count of a training call, a non-negative running variance
(NaN allowed), output overlap, the gradient dtype -- is a cdef function in src/_core.pyx,
section "argument rules", that the fast paths call on C values, with a def wrapper that raises
the rule's one message; the functions here call those wrappers.  What stays here is what the
fast path never does: turning arguments into canonical form (array-likes, layouts, byte order,
NumPy scalars and ``__index__`` objects) with the TypeErrors that name what was given, and the
checks of arguments the fast path only recognises (shapes of vectors and of ``dy``, ``out=``
kinds, read-only arrays).  So, for canonical input, the fast path declines a value exactly when
the rule rejects it, and no rule or message is written twice (tests/test_argument_rules.py holds
both routes to that).

Every check raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (right kind, wrong
value) naming the argument.  Nothing here modifies a caller's array.  The common case (a
C-contiguous float32/float64 ndarray and float64 vectors) costs a few attribute reads.
"""

import numbers
import operator

import numpy as np

from . import _core

F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)


def is_bfloat16(dt):
    """Whether ``dt`` is ``ml_dtypes.bfloat16`` (NumPy has no bfloat16 of its own; ml_dtypes
    registers one as a user dtype, so it is recognised by its scalar type)."""
    t = dt.type
    if (dt.kind == "V" and dt.itemsize == 2 and t.__name__ == "bfloat16"
            and t.__module__ == "ml_dtypes"):
        _core.note_bfloat16(dt.num)  # the entries and the gradient-dtype rule take it now
        return True
    return False


def is_float_dtype(dt):
    """A floating-point dtype: NumPy's, or ml_dtypes.bfloat16."""
    return dt.kind == "f" or is_bfloat16(dt)


def check_float_dtype(dt, name="x"):
    """``dt`` must be a kernel dtype: float16, bfloat16 (ml_dtypes), float32 or float64 (any
    byte order)."""
    if dt.kind == "f" and dt.itemsize in (2, 4, 8):
        return
    if is_bfloat16(dt):
        return
    raise TypeError(f"{name} must be a float16, bfloat16, float32 or float64 array, got dtype "
                    f"{dt} (convert it first, e.g. {name}.astype(np.float32))")


def check_not_masked(x, name):
    """A ``numpy.ma.MaskedArray`` is refused: its masked values would enter the statistics
    (``np.asarray`` drops the mask), a silently wrong result; the message names ``mask=``,
    whose True is the opposite of numpy.ma's (True: the value counts)."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a numpy.ma.MaskedArray, whose mask cbn would not see: pass "
            f"{name}.data with mask=~numpy.ma.getmaskarray({name}) (cbn's mask is True where a "
            f"value counts, numpy.ma's where it is hidden), or {name}.filled(value)")


def kernel_dtype(x, name="x"):
    """Return ``x`` as an ndarray of a kernel dtype (float16, bfloat16, float32, float64), in
    native byte order; a MaskedArray is a TypeError (:func:`check_not_masked`)."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    elif type(x) is not np.ndarray:
        check_not_masked(x, name)
    dt = x.dtype
    if dt is F32 or dt is F64:
        return x
    check_float_dtype(dt, name)
    if dt.byteorder not in ("=", "|") and dt != dt.newbyteorder("="):
        return x.astype(dt.newbyteorder("="))
    return x


def check_axis(axis, ndim, name="axis"):
    """Normalise a possibly negative channel axis for an array of ``ndim`` dimensions (the
    range rule: ``_core.check_channel_axis``)."""
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        a = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(axis).__name__}") from None
    return _core.check_channel_axis(a, ndim, name, axis)


#: ``check_ndim(shape, name)``: an input has a batch and a channel dimension at least.
check_ndim = _core.check_ndim


def check_input(x, axis, name="x"):
    """Validate ``x`` and its channel axis; return ``(x, axis)`` with axis normalised."""
    x = kernel_dtype(x, name)
    check_ndim(x.shape, name)
    return x, check_axis(axis, x.ndim)


def kernel_view(x, axis):
    """A C-contiguous view of ``x`` for the kernels, without copying when possible.

    Returns ``(xk, axis_k, perm)`` with ``xk = x.transpose(perm)`` C-contiguous and the channel
    at ``axis_k``; ``perm`` is None when ``x`` itself is used.  A Fortran-ordered array, or any
    array whose memory is contiguous in some axis order (e.g. channels-last memory presented as
    NCHW), is used in place; other strided arrays are copied once to C order.
    """
    flags = x.flags
    if flags.c_contiguous:
        return x, axis, None
    ndim = x.ndim
    if flags.f_contiguous:
        perm = tuple(range(ndim - 1, -1, -1))
        return x.T, ndim - 1 - axis, perm
    perm = tuple(sorted(range(ndim), key=lambda i: -abs(x.strides[i])))
    xt = x.transpose(perm)
    if xt.flags.c_contiguous:
        return xt, perm.index(axis), perm
    return np.ascontiguousarray(x), axis, None


def like_kernel(xk, perm, x_shape):
    """A new array laid out like ``xk``: returns ``(yk, y)`` with ``y`` in the caller's axis order."""
    yk = np.empty(xk.shape, xk.dtype)
    if perm is None:
        return yk, yk
    inverse = tuple(np.argsort(perm))
    return yk, yk.transpose(inverse)


def output_for(out, x, xk, perm, name="out", inputs=()):
    """Where the kernel writes: returns ``(yk, y, copy_back)``.

    ``y`` is what the function returns.  If ``out`` cannot take the kernel's writes directly
    (other layout, or partial overlap with ``xk`` or with one of the other kernel ``inputs``,
    C-contiguous arrays like ``xk`` or None: the rule of ``_core.no_partial_overlap``), the
    kernel writes to a fresh array and ``copy_back`` is true: the caller then copies into
    ``out``.
    """
    if out is None:
        yk, y = like_kernel(xk, perm, x.shape)
        return yk, y, False
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"{name} must have shape {x.shape}, got {out.shape}")
    if out.dtype.newbyteorder("=") != x.dtype.newbyteorder("="):
        raise TypeError(f"{name} must have dtype {x.dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    outk = out if perm is None else out.transpose(perm)
    if outk.flags.c_contiguous and outk.dtype.isnative:
        if all(a is None or _core.no_partial_overlap(outk, a) for a in (xk, *inputs)):
            return outk, out, False
    yk = np.empty(xk.shape, xk.dtype)
    return yk, out, True


def view_like(a, perm):
    """``a`` (shaped like x) in the kernel's axis order ``perm`` and C-contiguous, as
    :func:`kernel_view` made ``xk``; copied only when that order is not contiguous."""
    ak = a if perm is None else a.transpose(perm)
    return ak if ak.flags.c_contiguous else np.ascontiguousarray(ak)


def finish_output(yk, y, out, copy_back, perm):
    """The result of :func:`output_for`'s ``(yk, y, copy_back)``: ``y``, or ``out`` after
    copying the kernel's temporary ``yk`` into it."""
    if copy_back:
        np.copyto(out if perm is None else out.transpose(perm), yk)
        return out
    return y


#: ``geometry(shape, axis)``: (outer, C, inner) of a C-contiguous array with channel axis
#: ``axis``, as the fast paths view it.
geometry = _core.geometry


def channel_vector(a, name, C, *, writeable=False):
    """Validate a per-channel array: an ndarray of shape (C,), of a float dtype -- or of an
    integer dtype when it is only read (the callers convert it as NumPy would, to float64).
    Returns it as given.  ``writeable``: the array is updated in place, so it must be a
    writeable float ndarray."""
    if a is None:
        raise TypeError(f"{name} must be an array of shape ({C},), got None")
    if not isinstance(a, np.ndarray):
        if writeable:
            raise TypeError(
                f"{name} must be a numpy.ndarray (it is updated in place), got {type(a).__name__}")
        a = np.asarray(a)
    if not (is_float_dtype(a.dtype) or (not writeable and a.dtype.kind in "iu")):
        raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")
    if a.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},) to match the channel axis, got {a.shape}")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name} is read-only but must be updated in place")
    return a


#: ``gradient_dtype(x_dtype, weight)``: dtype of dweight and dbias, that of ``weight`` when
#: given, else of ``x``; float32 in place of float16 and bfloat16 (float16 sums overflow past
#: 65504).
gradient_dtype = _core.gradient_dtype


def as_f64(a, name, C):
    """A per-channel array as a C-contiguous float64 vector (no copy when it already is one)."""
    if a.__class__ is np.ndarray and a.dtype is F64 and a.shape == (C,) and a.flags.c_contiguous:
        return a
    a = channel_vector(a, name, C)
    return np.ascontiguousarray(a, dtype=F64)


def check_flag(value, name):
    """A yes/no argument: a bool, a NumPy bool or the integer 0 or 1 (not any truthy object:
    ``training="no"`` must not train)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {value!r}")


def check_needs(needs):
    """``needs``: three flags for (dx, dweight, dbias)."""
    if isinstance(needs, (str, bytes)) or not hasattr(needs, "__len__") or len(needs) != 3:
        raise TypeError(f"needs must be a tuple of three booleans (dx, dweight, dbias), "
                        f"got {needs!r}")
    return tuple(check_flag(f, "each item of needs") for f in needs)


def _real(value, name):
    """A real number (int, float or NumPy scalar; not a string or a bool) as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def check_eps(eps):
    """eps must be a finite number > 0 (the rule: ``_core.check_eps_value``)."""
    return _core.check_eps_value(_real(eps, "eps"), eps)


def check_momentum(momentum):
    """momentum must be a number in [0, 1] (the rule: ``_core.check_momentum_value``)."""
    return _core.check_momentum_value(_real(momentum, "momentum"), momentum)


def check_running_stats(running_mean, running_var, momentum, C):
    """Validate the running statistics updated in place by a training forward pass.

    Parameters
    ----------
    running_mean, running_var : ndarray or None
        Writeable float vectors of shape (C,), or None (not updated).
    momentum : float
        Checked (in [0, 1]) only when a running statistic is given
        (``_core.momentum_applies``).
    C : int
        Number of channels.

    Returns
    -------
    float
        ``momentum``, as a float when checked.
    """
    if not _core.momentum_applies(running_mean, running_var):
        return momentum
    momentum = check_momentum(momentum)
    if running_mean is not None:
        channel_vector(running_mean, "running_mean", C, writeable=True)
    if running_var is not None:
        channel_vector(running_var, "running_var", C, writeable=True)
    return momentum


#: ``check_batch_count(n, shape=None)``: training statistics need more than one value per
#: channel (torch's rule); an empty batch (n == 0) is no error.
check_batch_count = _core.check_batch_count


def check_threads(num_threads):
    """None (all OpenMP threads) or a positive int; returns the int the kernels take (0 = auto;
    the rule and its cap: ``_core.check_thread_count``)."""
    if num_threads is not None:
        if isinstance(num_threads, bool):
            raise TypeError("num_threads must be None or a positive integer, got bool")
        try:
            num_threads = operator.index(num_threads)
        except TypeError:
            raise TypeError(
                "num_threads must be None or a positive integer, got "
                f"{type(num_threads).__name__}"
            ) from None
    return _core.check_thread_count(num_threads)


#: ``check_running_var(var)``: a float64 vector (:func:`as_f64`) of running variances for
#: inference has no negative entry (NaN is allowed: it propagates to its channel).
check_running_var = _core.check_running_var


def check_inference_stats(running_mean, running_var):
    """Inference needs both running statistics."""
    if running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var are required for inference")


def check_like(a, shape, dtype, name, ref="x", same_shape=None):
    """``a`` (an array) must have the shape ``shape`` and, unless ``dtype`` is None, the dtype
    ``dtype`` of the array named ``ref``; ``same_shape(s, t)`` compares shapes (default ==)."""
    if not (a.shape == shape if same_shape is None else same_shape(a.shape, shape)):
        raise ValueError(f"{name} must have the shape of {ref} {shape}, got {a.shape}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} must have the dtype of {ref} ({dtype}), got {a.dtype}")


def check_relu_output(relu, y, allow_unused=False):
    """``y``, the forward output, is required with a fused ReLU (``relu``) and, unless
    ``allow_unused``, given only then (or with the other activations that take it)."""
    if relu and y is None:
        raise ValueError("y (the forward output) is required with activation='relu'")
    if not relu and y is not None and not allow_unused:
        raise ValueError("y is only used with activation 'relu', 'relu6' or 'leaky_relu'")



def check_activation(activation):
    """The kernels' code of ``activation`` (``cbn._core.ACTIVATIONS``): 0 for None, a true
    code for a fused activation such as ``"relu"``."""
    if activation is None:
        return 0
    code = _core.ACTIVATIONS.get(activation) if isinstance(activation, str) else None
    if code is None:
        expected = " or ".join(["None"] + [repr(name) for name in _core.ACTIVATIONS])
        raise ValueError(f"activation must be {expected}, got {activation!r}")
    return code


def from_output(activation, slope):
    """Whether an activation's gradient is a function of its output, so that backward takes
    its mask from ``y``: relu, relu6, and leaky_relu with ``slope >= 0`` (with a negative
    slope, y > 0 also where the input was negative).  The others recompute their input from
    x, the statistics, bias and residual."""
    return activation in ("relu", "relu6") or (activation == "leaky_relu" and slope >= 0)


def _what(activation, slope):
    if activation == "leaky_relu" and slope < 0:
        return f"activation='leaky_relu' with negative_slope={slope!r} < 0"
    return f"activation={activation!r}"


def check_epilogue(activation, negative_slope):
    """``(code, slope)`` of a fused activation: the kernels' code (:func:`check_activation`)
    and leaky ReLU's negative slope (default 0.01; an error for any other activation)."""
    code = check_activation(activation)
    if activation == "leaky_relu":
        if negative_slope is None:
            return code, 0.01
        slope = _real(negative_slope, "negative_slope")
        if not np.isfinite(slope):
            raise ValueError(f"negative_slope must be finite, got {slope!r}")
        return code, slope
    if negative_slope is not None:
        raise ValueError(f"negative_slope is only used with activation='leaky_relu', got "
                         f"activation={activation!r}")
    return code, 0.0


_RELU = _core.ACTIVATIONS["relu"]


def in_post_stage(code, residual):
    """Whether an op runs through the kernels' post-operation stage (cbn_post.h): a residual,
    or an activation other than the in-register ReLU."""
    return residual is not None or code > _RELU


def residual_view(residual, x, xk, perm, name="residual"):
    """The residual in the kernel's layout and dtype: x's shape, a floating-point dtype, cast
    to x's dtype (a copy only when its dtype or layout differs)."""
    if not isinstance(residual, np.ndarray):
        residual = np.asarray(residual)
    check_not_masked(residual, name)
    if not is_float_dtype(residual.dtype):
        raise TypeError(f"{name} must be a floating-point array, got dtype {residual.dtype}")
    check_like(residual, x.shape, None, name)
    if residual.dtype != xk.dtype:
        residual = residual.astype(xk.dtype)
    return view_like(residual, perm)


def check_needs4(needs, residual):
    """``needs``: 3 flags (dx, dweight, dbias), or 4 with dresidual, which is asked for only
    with a residual (3 flags: dresidual whenever there is a residual).  Returns 4 flags."""
    if (isinstance(needs, (str, bytes)) or not hasattr(needs, "__len__")
            or len(needs) not in (3, 4)):
        raise TypeError(f"needs must be a tuple of three or four booleans (dx, dweight, dbias"
                        f"[, dresidual]), got {needs!r}")
    flags = tuple(check_flag(f, "each item of needs") for f in needs)
    if len(flags) == 3:
        flags += (residual is not None,)
    if flags[3] and residual is None:
        raise ValueError("needs asks for dresidual, but no residual was given")
    return flags


def check_fused_gradient_inputs(activation, y, residual, needs, slope=0.0):
    """The inputs of a fused backward: ``y`` exactly when the gradient comes from the output
    (:func:`from_output`); ``needs`` as :func:`check_needs4`.  Returns (need_dx, need_dw,
    need_db, need_dres)."""
    if activation is not None and from_output(activation, slope) and y is None:
        raise ValueError(f"y (the forward output) is required with {_what(activation, slope)}")
    if not (activation is not None and from_output(activation, slope)) and y is not None:
        if activation is None:
            raise ValueError("y is only used with activation 'relu', 'relu6' or 'leaky_relu'")
        raise ValueError(f"y is not used with {_what(activation, slope)}: its input is "
                         f"recomputed from x, mean, invstd, weight, bias and residual")
    return check_needs4(needs, residual)


#: ``bias=`` of a backward not given (an error where the activation's input is recomputed:
#: a forgotten bias would silently give wrong gradients; pass None for a forward without one).
UNSET = type("Unset", (), {"__repr__": lambda self: "<not given>"})()


def check_bias_given(bias, activation, slope):
    """``bias`` must be given (None allowed) when the backward recomputes z; returns it with
    UNSET as None."""
    if bias is UNSET:
        if activation is not None and not from_output(activation, slope):
            raise ValueError(f"bias is required with {_what(activation, slope)} (the "
                             f"activation's input is recomputed; pass bias=None if the forward "
                             f"had none)")
        return None
    return bias
