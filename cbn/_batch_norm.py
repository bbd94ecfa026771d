"""The public batch-norm functions: validation, allocation and dispatch to the kernels.

Each function offers its arguments to a C fast path first (``_core.fast_*``: canonical input
only, else None), then takes the Python route: cbn/_validation.py for the checks, whose value
rules and messages live in src/_core.pyx ("argument rules"), and the shared formulas of
``_core`` (``update_running``, ``inference_scale``, ``parameter_gradients``), the same ones the
fast path computes with.
"""

import numpy as np

from ._atomic import deferred_interrupt
from . import _conventions as conv
from . import _masked as M
from . import _validation as v
from ._dispatch import kernels as _k
from ._types import BackwardResult, ForwardResult, FusedBackwardResult

__all__ = [
    "batch_norm",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_inference",
]

_F64 = v.F64
_F16 = v.F16

_fast_forward = _k.fast_forward
_fast_backward = _k.fast_backward
_fast_inference = _k.fast_inference
_fast_fused_backward = _k.fast_fused_backward
_ALL_GRADIENTS = (True, True, True)


def _empty_stats(C, training_out):
    mean = np.full(C, np.nan)
    invstd = np.full(C, np.nan)
    return ForwardResult(training_out, mean, invstd)


def _epilogue(activation, negative_slope, residual):
    """``(code, slope, post)`` of a call: the activation's code and slope
    (:func:`~cbn._validation.check_epilogue`) and whether it runs through the post-operation
    stage; the plain call (no activation, no residual) returns before any check."""
    if activation is None and negative_slope is None and residual is None:
        return 0, 0.0, False
    code, slope = v.check_epilogue(activation, negative_slope)
    return code, slope, v.in_post_stage(code, residual)


def batch_norm_forward(x, weight=None, bias=None, *, eps=1e-5, running_mean=None,
                       running_var=None, momentum=conv.DEFAULT, axis=1, out=None,
                       num_threads=None, skip_nonfinite=False, activation=None, residual=None,
                       negative_slope=None, convention="torch", mask=None, sample_weight=None,
                       masked_output="normalize"):
    """Training-mode batch normalization forward pass with the batch statistics.

    Computes ``out = (x - mean) * invstd * weight + bias`` per channel, where ``mean`` and the
    biased variance ``var`` are taken over every axis except ``axis``, and
    ``invstd = 1 / sqrt(var + eps)``.  If running statistics are given they are updated in place
    as in :func:`torch.nn.functional.batch_norm`:
    ``running = (1 - momentum) * running + momentum * batch``, with the unbiased variance
    ``var * n / (n - 1)`` for ``running_var`` -- or by another framework's rule
    (``convention``).

    Parameters
    ----------
    x : ndarray of float16, bfloat16, float32 or float64, ndim >= 2
        The input, with the channel dimension at ``axis`` (the 16-bit formats are computed
        in float32 as they load, with float64 statistics; bfloat16 is ``ml_dtypes.bfloat16``).
    weight, bias : array_like of shape (C,), optional
        Affine parameters gamma and beta, any float dtype; None means 1 and 0.
    eps : float, default 1e-5
        Added to the variance; finite and > 0.
    running_mean, running_var : ndarray of shape (C,), optional
        Updated in place in their own dtype when given (both or either).
    momentum : float, default: the convention's (0.1 torch, 0.99 keras, 0.9 onnx, 0.99 flax)
        The running-stat update factor, in [0, 1], in the convention's meaning: torch's is
        the weight of the batch statistics, the others' the weight of the running value.
    axis : int, default 1
        The channel axis (negative counts from the end; -1 for channels-last).
    out : ndarray, optional
        Where to write the result: same shape and dtype as ``x``; may be ``x`` itself.
    num_threads : int, optional
        OpenMP threads; None uses ``omp_get_max_threads()`` (so ``OMP_NUM_THREADS`` and
        threadpoolctl apply).  Requests above the number of processors are capped to it;
        small inputs run on the calling thread.
    skip_nonfinite : bool, default False
        If true, a channel whose batch mean or variance is not finite (the batch had NaN or
        Inf in that channel) leaves its running statistics unchanged, instead of spreading the
        NaN/Inf into them (torch has no such option, see pytorch#88474).
    activation : {None, "relu", "relu6", "leaky_relu", "silu", "gelu", "gelu_tanh"}
        The activation applied in the same pass, with the semantics of torch's functional of
        that name (``"gelu"`` the exact erf form, ``"gelu_tanh"`` torch's
        ``approximate="tanh"``), saving a full read and write of the output against a
        separate op.
    residual : array_like, optional
        Added before the activation: ``out = activation(bn(x) + residual)`` (a ResNet block's
        skip connection, oneDNN's ``fuse_norm_add_relu``), in the same pass.  Shape of ``x``,
        any float dtype (cast to that of ``x``); ``out`` may be ``residual`` itself.
    negative_slope : float, optional
        The slope of ``"leaky_relu"`` for negative inputs (default 0.01); an error with any
        other activation.
    convention : {"torch", "keras", "onnx", "flax"}, default "torch"
        The framework whose running-statistics rule applies: ``"torch"``
        ``running = (1 - momentum) * running + momentum * batch`` with the unbiased batch
        variance; ``"keras"``, ``"onnx"`` (ONNX Runtime's training mode) and ``"flax"``
        ``running = momentum * running + (1 - momentum) * batch`` with the biased one.  The
        output and the returned statistics are the same in all (``eps`` stays as given:
        Keras's layers default to 1e-3).
    mask : array_like of bool, optional
        The positions the statistics are taken over (True: counts; e.g. the valid steps of
        padded sequences).  Shape: ``x``'s without the channel axis (one per position, e.g.
        (N, T) for (N, T, C) with ``axis=-1``, (N, H, W) for NCHW), ``x``'s own (one per
        element: channels may count different elements), or broadcastable to one of them.
        Masked elements are never read into the statistics (NaN there is harmless).
    sample_weight : array_like, optional
        Non-negative finite weights of the same shapes instead of a mask (frequency weights:
        ``mean = sum(w x) / sum(w)``, ``var = sum(w (x - mean)^2) / sum(w)``, and the unbiased
        running variance ``var * W / (W - 1)`` with ``W = sum(w)``); not with ``mask``.
    masked_output : {"normalize", "zero", "keep"}, default "normalize"
        With a mask or weights, the output at positions of weight 0: normalized with the
        masked statistics like every other position (as Keras does), 0, or ``x`` unchanged
        (no activation either).

    Returns
    -------
    ForwardResult
        ``(out, mean, invstd)``: ``out`` has the dtype of ``x``; ``mean`` and ``invstd`` are
        float64 arrays of shape (C,) (float64 so that the backward pass stays exact on data
        with large offsets; torch returns them in the input dtype).

    Raises
    ------
    TypeError
        If ``x`` or a parameter is not floating point, or ``out`` has the wrong dtype.
    ValueError
        On a bad shape or axis, ``eps <= 0``, ``momentum`` outside [0, 1], a read-only
        running statistic, or a single value per channel ("Expected more than 1 value per
        channel when training").

    Examples
    --------
    >>> import numpy as np
    >>> import cbn
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]], dtype=np.float32)  # N = 2, C = 2
    >>> out, mean, invstd = cbn.batch_norm_forward(x)
    >>> mean
    array([ 2., 20.])
    >>> np.round(out, 4)
    array([[-1., -1.],
           [ 1.,  1.]], dtype=float32)

    Notes
    -----
    NaN and Inf in ``x`` propagate to the outputs, mean and invstd of their own channel only;
    other channels are unaffected.

    With ``mask`` or ``sample_weight``, training needs a weight sum above 1 in every channel
    (the rule of one value per channel); with ``skip_nonfinite=True`` a channel of weight sum
    0 is allowed, gets NaN statistics (NaN outputs with ``masked_output="normalize"``) and
    keeps its running statistics.  The statistics keep the unmasked accuracy and
    thread-count independence.  A ``numpy.ma.MaskedArray`` ``x`` is honoured: its mask (True:
    hidden) is the complement of ``mask``, and ``out`` is a MaskedArray hiding the same
    values.

    An empty batch (a zero-length axis other than the channel axis) is not an error: ``out`` is
    empty, ``mean`` and ``invstd`` are NaN and the running statistics are left unchanged, as
    ``torch.nn.functional.batch_norm`` leaves them.

    Statistics are accumulated in float64, per cache-sized block with sums shifted by an element
    of the block (which bounds the cancellation), and the blocks are merged by Chan's formula:
    float32 data with ``|mean| / std`` of 1e6 keeps a relative variance error near 1e-9.
    float16 and bfloat16 data are summed in two levels (float32 partials about a per-channel
    centre, then float64), certified per channel within 2^-20 of the variance and 2^-20
    standard deviations of the mean, else summed again (user guide, "Half precision").
    Results are bit-identical for any ``num_threads``.

    Layout: any ``ndim >= 2`` with the channel at ``axis``.  C-contiguous arrays,
    Fortran-ordered arrays and arrays contiguous in another axis order (e.g. channels-last memory
    viewed as NCHW) are processed without a copy; other strided arrays are first copied to C
    order (one extra pass).
    """
    if skip_nonfinite is not False and skip_nonfinite is not True:  # "no" must not skip
        skip_nonfinite = v.check_flag(skip_nonfinite, "skip_nonfinite")
    code, slope, post = _epilogue(activation, negative_slope, residual)
    if convention != "torch":
        conv.check_convention(convention)
    if momentum is conv.DEFAULT:
        momentum = conv.DEFAULT_MOMENTUM[convention]
    if type(x) is not np.ndarray and isinstance(x, np.ma.MaskedArray):
        x, mask, hidden = M.unmask(x, mask, sample_weight, axis)
        r = _masked_forward(x, weight, bias, eps, running_mean, running_var, momentum, axis,
                            out, num_threads, skip_nonfinite, code, slope, post, residual,
                            convention, mask, sample_weight, masked_output)
        return ForwardResult(M.masked_like(r.out, hidden), r.mean, r.invstd)
    if mask is not None or sample_weight is not None:
        return _masked_forward(x, weight, bias, eps, running_mean, running_var, momentum, axis,
                               out, num_threads, skip_nonfinite, code, slope, post, residual,
                               convention, mask, sample_weight, masked_output)
    if masked_output != "normalize":
        M.check_masked_output(masked_output)
        raise ValueError("masked_output applies with mask= or sample_weight=")
    if convention == "torch":
        result = _fast_forward(x, weight, bias, eps, running_mean, running_var, momentum, axis,
                               num_threads, out, skip_nonfinite, 0 if post else code,
                               code if post else -1, slope, residual)
        if result is not None:
            return result
    x, axis = v.check_input(x, axis)
    eps = v.check_eps(eps)
    nt = v.check_threads(num_threads)
    xk, ak, perm = v.kernel_view(x, axis)
    outer, C, inner = v.geometry(xk.shape, ak)
    w = None if weight is None else v.as_f64(weight, "weight", C)
    b = None if bias is None else v.as_f64(bias, "bias", C)
    momentum = conv.update_factor(
        convention, v.check_running_stats(running_mean, running_var, momentum, C))
    n = outer * inner
    v.check_batch_count(n, x.shape)
    rk = None if residual is None else v.residual_view(residual, x, xk, perm)
    yk, y, copy_back = v.output_for(out, x, xk, perm, inputs=() if rk is None else (rk,))
    if n == 0:
        return _empty_stats(C, v.finish_output(yk, y, out, copy_back, perm))
    mean = np.empty(C, _F64)
    var = np.empty(C, _F64)
    invstd = np.empty(C, _F64)
    # a call that changes the caller's arrays does it all or not at all (Ctrl-C; ~9 us, so
    # only then)
    with deferred_interrupt(running_mean is not None or running_var is not None
                            or out is not None):
        _k.forward_train(xk, yk, outer, C, inner, w, b, eps, mean, var, invstd, nt,
                           0 if post else code, post_act=code if post else -1, slope=slope,
                           residual=rk)
        _k.update_running(running_mean, running_var, mean, var, n, momentum, skip_nonfinite,
                          conv.stores_unbiased(convention))
        y = v.finish_output(yk, y, out, copy_back, perm)
    return ForwardResult(y, mean, invstd)


def _masked_forward(x, weight, bias, eps, running_mean, running_var, momentum, axis, out,
                    num_threads, skip_nonfinite, code, slope, post, residual, convention, mask,
                    sample_weight, masked_output):
    """batch_norm_forward with a mask or weights (cbn/_masked.py): the masked statistics,
    then the element-wise pass with them, then the padding option."""
    x, axis = v.check_input(x, axis)
    eps = v.check_eps(eps)
    nt = v.check_threads(num_threads)
    masked_output = M.check_masked_output(masked_output)
    xk, ak, perm = v.kernel_view(x, axis)
    outer, C, inner = v.geometry(xk.shape, ak)
    wts = M.weights_for(mask, sample_weight, x, axis, xk, perm)
    w = None if weight is None else v.as_f64(weight, "weight", C)
    b = None if bias is None else v.as_f64(bias, "bias", C)
    momentum = conv.update_factor(
        convention, v.check_running_stats(running_mean, running_var, momentum, C))
    rk = None if residual is None else v.residual_view(residual, x, xk, perm)
    # "keep" reads x after the pass: an output over x goes through a fresh array
    via_copy = masked_output == "keep" and out is not None and np.may_share_memory(out, x)
    target = None if via_copy else out
    if via_copy:
        v.output_for(out, x, xk, perm)  # out's own checks
    yk, y, copy_back = v.output_for(target, x, xk, perm, inputs=() if rk is None else (rk,))
    if outer * inner == 0:
        return _empty_stats(C, v.finish_output(yk, y, target, copy_back, perm))
    sw, mean, m2 = M.moments_of(xk, wts, outer, C, inner, nt)
    M.check_training_weights(sw, wts.name, skip_nonfinite)
    mean, var, var_unbiased = M.statistics(sw, mean, m2)
    invstd = 1.0 / np.sqrt(var + eps)
    scale = invstd if w is None else invstd * w
    shift = np.zeros(C, _F64) if b is None else b
    with deferred_interrupt(running_mean is not None or running_var is not None
                            or out is not None):
        _k.inference(xk, yk, outer, C, inner, mean, scale, shift, nt, 0 if post else code,
                     post_act=code if post else -1, slope=slope, residual=rk)
        M.finish_padding(yk, xk, wts, masked_output, outer, C, inner, nt)
        _k.update_running(running_mean, running_var, mean,
                          var_unbiased if conv.stores_unbiased(convention) else var, 0,
                          momentum, skip_nonfinite, False)
        y = v.finish_output(yk, y, target, copy_back, perm)
        if via_copy:
            np.copyto(out, y)
            y = out
    return ForwardResult(y, mean, invstd)


def batch_norm_inference(x, running_mean, running_var, weight=None, bias=None, *, eps=1e-5,
                         axis=1, out=None, num_threads=None, activation=None, residual=None,
                         negative_slope=None):
    """Evaluation-mode batch normalization with fixed statistics, in one fused pass.

    Computes ``out = x * scale + shift`` per channel with ``scale = weight / sqrt(var + eps)``
    and ``shift = bias - mean * scale``.  The kernel evaluates it in the equivalent centred form
    ``(x - mean) * scale + bias``, with the mean split into two numbers of the input type, so
    that float32 inputs with large offsets do not lose their significant digits to
    cancellation; the cost is the same single read and single write.

    Parameters
    ----------
    x : ndarray of float16, bfloat16, float32 or float64, ndim >= 2
        The input, with the channel dimension at ``axis`` (the 16-bit formats are computed
        in float32 as they load, with float64 statistics; bfloat16 is ``ml_dtypes.bfloat16``).
    running_mean, running_var : array_like of shape (C,)
        The statistics to normalize with (any float dtype); ``running_var`` must be >= 0.
    weight, bias : array_like of shape (C,), optional
        Affine parameters; None means 1 and 0.
    eps : float, default 1e-5
        Added to the variance; finite and > 0.
    axis : int, default 1
        The channel axis.
    out : ndarray, optional
        Where to write the result: same shape and dtype as ``x``; may be ``x`` itself.
    num_threads : int, optional
        OpenMP threads; None uses ``omp_get_max_threads()``.
    activation : {None, "relu", "relu6", "leaky_relu", "silu", "gelu", "gelu_tanh"}
        The activation applied in the same pass, with the semantics of torch's functional of
        that name (``"gelu"`` the exact erf form, ``"gelu_tanh"`` torch's
        ``approximate="tanh"``), saving a full read and write of the output against a
        separate op.
    residual : array_like, optional
        Added before the activation: ``out = activation(bn(x) + residual)`` (a ResNet block's
        skip connection, oneDNN's ``fuse_norm_add_relu``), in the same pass.  Shape of ``x``,
        any float dtype (cast to that of ``x``); ``out`` may be ``residual`` itself.
    negative_slope : float, optional
        The slope of ``"leaky_relu"`` for negative inputs (default 0.01); an error with any
        other activation.

    Returns
    -------
    ndarray
        The normalized array, dtype of ``x``.

    Raises
    ------
    TypeError, ValueError
        On bad arguments (see :func:`batch_norm_forward`), and if ``running_var`` has a
        negative entry (torch silently returns NaN there).  A NaN entry is not an error: like
        NaN data, it propagates to its own channel of the output.

    Examples
    --------
    >>> import numpy as np
    >>> import cbn
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]], dtype=np.float32)
    >>> running_mean, running_var = np.array([2.0, 20.0]), np.array([1.0, 100.0])
    >>> np.round(cbn.batch_norm_inference(x, running_mean, running_var, bias=[0.5, 0.0]), 4)
    array([[-0.5, -1. ],
           [ 1.5,  1. ]], dtype=float32)

    Notes
    -----
    Layout: any ``ndim >= 2`` with the channel at ``axis``.  C-contiguous arrays,
    Fortran-ordered arrays and arrays contiguous in another axis order (e.g. channels-last memory
    viewed as NCHW) are processed without a copy; other strided arrays are first copied to C
    order (one extra pass).
    """
    code, slope, post = _epilogue(activation, negative_slope, residual)
    y = _fast_inference(x, running_mean, running_var, weight, bias, eps, axis, num_threads, out,
                        0 if post else code, code if post else -1, slope, residual)
    if y is not None:
        return y
    if isinstance(x, np.ma.MaskedArray):  # every value normalized; the output hides the same
        return M.masked_like(batch_norm_inference(
            np.asarray(x.data), running_mean, running_var, weight, bias, eps=eps, axis=axis,
            out=out, num_threads=num_threads, activation=activation, residual=residual,
            negative_slope=negative_slope), np.ma.getmaskarray(x))
    x, axis = v.check_input(x, axis)
    eps = v.check_eps(eps)
    nt = v.check_threads(num_threads)
    xk, ak, perm = v.kernel_view(x, axis)
    outer, C, inner = v.geometry(xk.shape, ak)
    v.check_inference_stats(running_mean, running_var)
    rm = v.as_f64(running_mean, "running_mean", C)
    rv = v.as_f64(running_var, "running_var", C)
    v.check_running_var(rv)
    scale = _k.inference_scale(None if weight is None else v.as_f64(weight, "weight", C), rv, eps)
    shift = np.zeros(C, _F64) if bias is None else v.as_f64(bias, "bias", C)
    rk = None if residual is None else v.residual_view(residual, x, xk, perm)
    yk, y, copy_back = v.output_for(out, x, xk, perm, inputs=() if rk is None else (rk,))
    if xk.size:
        _k.inference(xk, yk, outer, C, inner, rm, scale, shift, nt, 0 if post else code,
                       post_act=code if post else -1, slope=slope, residual=rk)
    return v.finish_output(yk, y, out, copy_back, perm)


def batch_norm_backward(dy, x, mean, invstd, weight=None, *, axis=1, out=None, num_threads=None,
                        needs=_ALL_GRADIENTS, activation=None, y=None, bias=v.UNSET,
                        residual=None, negative_slope=None, dresidual_out=None, mask=None,
                        sample_weight=None, masked_output="normalize"):
    """Exact gradients of the training forward pass.

    With ``xhat = (x - mean) * invstd`` and ``n`` values per channel::

        dbias   = sum(dy)
        dweight = sum(dy * xhat)
        dx      = weight * invstd / n * (n * dy - dbias - xhat * dweight)

    Parameters
    ----------
    dy : ndarray
        Gradient of the loss with respect to the forward output; shape and dtype of ``x``.
    x : ndarray of float16, bfloat16, float32 or float64
        The forward input.
    mean, invstd : array_like of shape (C,)
        The statistics saved by :func:`batch_norm_forward`.
    weight : array_like of shape (C,), optional
        The forward ``weight``; None means 1.
    axis : int, default 1
        The channel axis.
    out : ndarray, optional
        Where to write ``dx``: same shape and dtype as ``x``.  It may be ``dy`` or ``x``
        itself (each element is read before it is overwritten); other overlaps are handled
        through a temporary.  Left untouched (and not validated) when ``needs[0]`` is False.
    num_threads : int, optional
        OpenMP threads; None uses ``omp_get_max_threads()``.
    needs : tuple of 3 or 4 bool, default all
        Which of ``(dx, dweight, dbias)`` -- and, with a residual, ``dresidual`` -- to
        compute.  Gradients not asked for are None and cost nothing (only ``dbias``: a single
        pass over ``dy``).
    activation : {None, "relu", "relu6", "leaky_relu", "silu", "gelu", "gelu_tanh"}
        The activation fused into the forward pass; ``dy`` is then the gradient with respect
        to its output.  For ``"relu"``, ``"relu6"`` and ``"leaky_relu"`` the derivative is a
        function of the output, and ``y`` is required.  For ``"silu"``, ``"gelu"`` and
        ``"gelu_tanh"`` (and ``"leaky_relu"`` with a negative slope, whose output no longer
        tells the sign of its input) the activation's input ``z = bn(x) + residual`` is
        recomputed from ``x``, ``mean``, ``invstd``, ``weight``, ``bias`` and ``residual``
        (the same arithmetic as the forward pass, so the same bits), and ``y`` must not be
        given; the residual, when the forward had one, must be given too.
    y : ndarray, optional
        The forward output (after the fused activation); shape and dtype of ``x``.
    bias : array_like of shape (C,) or None
        The forward ``bias`` (None: the forward had none).  Required when ``z`` is recomputed
        (silu, gelu, gelu_tanh, and leaky_relu with a negative slope): a forgotten bias would
        silently give wrong gradients.  Ignored otherwise.
    residual : array_like, optional
        The forward ``residual``: with it the result has a fourth gradient, ``dresidual``
        (``dy * act'(z)``, the gradient flowing into the skip branch).  Read only when ``z`` is
        recomputed.
    negative_slope : float, optional
        The forward's ``negative_slope`` of ``"leaky_relu"`` (default 0.01).
    dresidual_out : ndarray, optional
        Where to write ``dresidual`` (shape and dtype of ``x``; it must not overlap ``x`` or
        ``out``).
    mask, sample_weight, masked_output : optional
        Those of a masked or weighted forward (:func:`batch_norm_forward`): the exact
        gradient of that forward.  With ``W = sum(w)`` per channel and ``g`` the gradient at
        the normalization's output (``dy`` through the activation; 0 where the weight is 0
        when ``masked_output`` is "zero" or "keep")::

            dbias   = sum(g)                 (over every position)
            dweight = sum(g * xhat)
            dx      = weight * invstd * (g - w / W * (dbias + xhat * dweight))

        so a position of weight 0 gets ``dx`` through the normalization without entering the
        statistics ("normalize"), ``dx = 0`` ("zero"), or ``dx = dy`` ("keep").

    Returns
    -------
    BackwardResult or FusedBackwardResult
        ``(dx, dweight, dbias)``, and ``(dx, dweight, dbias, dresidual)`` when a residual is
        given; ``dweight`` and ``dbias`` have the dtype of ``weight`` when it is given, else
        that of ``x``, except that float16 and bfloat16 become float32 (sums of float16
        gradients overflow past 65504; bfloat16 keeps 8 bits).

    Raises
    ------
    TypeError, ValueError
        On bad arguments, e.g. ``dy`` of another shape or dtype than ``x``, or ``mean`` /
        ``invstd`` not of shape (C,).

    Examples
    --------
    >>> import numpy as np
    >>> import cbn
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 20.0]], dtype=np.float32)
    >>> out, mean, invstd = cbn.batch_norm_forward(x)
    >>> dy = np.ones_like(x)  # d(sum of the outputs) / d(out)
    >>> dx, dweight, dbias = cbn.batch_norm_backward(dy, x, mean, invstd)
    >>> dbias
    array([3., 3.], dtype=float32)
    >>> bool(np.abs(dx).max() < 1e-6)  # the normalized outputs always sum to 0
    True

    Notes
    -----
    Layout: any ``ndim >= 2`` with the channel at ``axis``.  C-contiguous arrays,
    Fortran-ordered arrays and arrays contiguous in another axis order (e.g. channels-last memory
    viewed as NCHW) are processed without a copy; other strided arrays are first copied to C
    order (one extra pass).

    With a residual or an activation other than ReLU, the gradient ``g = dy * act'(z)`` is
    written once (into ``dresidual`` when it is asked for, else a temporary), in one pass that
    reads ``dy`` and ``y`` (or ``dy``, ``x`` and ``residual``); the two batch-norm passes then
    read ``g`` and ``x``.  Memory traffic, in arrays of x's size: 6 reads and 2 writes from
    ``y`` (the same as a fused two-pass kernel that writes ``dresidual``), 7 reads and 2
    writes when ``z`` is recomputed with a residual.  ReLU without a residual applies its mask
    inside the batch-norm passes instead, which then read ``dy`` and ``y`` and write nothing
    more.
    """
    code, slope, post = _epilogue(activation, negative_slope, residual)
    if residual is None and dresidual_out is not None:
        raise ValueError("dresidual_out is only used with a residual")
    if type(x) is not np.ndarray and isinstance(x, np.ma.MaskedArray):
        x, mask, hidden = M.unmask(x, mask, sample_weight, axis)
        if isinstance(dy, np.ma.MaskedArray):
            dy = np.asarray(dy.data)
        r = _masked_backward(dy, x, mean, invstd, weight, bias, residual, y, axis, out,
                             num_threads, needs, activation, code, slope, dresidual_out,
                             mask, sample_weight, masked_output)
        return type(r)(M.masked_like(r[0], hidden), *r[1:])
    if mask is not None or sample_weight is not None:
        return _masked_backward(dy, x, mean, invstd, weight, bias, residual, y, axis, out,
                                num_threads, needs, activation, code, slope, dresidual_out,
                                mask, sample_weight, masked_output)
    if masked_output != "normalize":
        M.check_masked_output(masked_output)
        raise ValueError("masked_output applies with mask= or sample_weight=")
    if post:
        bias = v.check_bias_given(bias, activation, slope)
        from_y = v.from_output(activation, slope)
        if (activation is not None and (dresidual_out is None or residual is not None)
                and (needs is _ALL_GRADIENTS or (type(needs) is tuple and all(
                    f is True for f in needs) and len(needs) in (3, 3 + (residual is not None))))
                and (y is None) != from_y):
            result = _fast_fused_backward(dy, x, mean, invstd, weight, bias, residual, y, axis,
                                          num_threads, out, code, slope, from_y, dresidual_out)
            if result is not None:
                return result
        return _fused_backward(dy, x, mean, invstd, weight, bias, residual, y, axis, out,
                               num_threads, needs, activation, code, slope, dresidual_out)
    if (needs is not _ALL_GRADIENTS and not isinstance(needs, (str, bytes))
            and hasattr(needs, "__len__") and len(needs) == 4):  # dresidual must be False here
        needs = v.check_needs4(needs, None)[:3]
    relu = code
    v.check_relu_output(relu, y)
    if needs is _ALL_GRADIENTS or (type(needs) is tuple and needs == _ALL_GRADIENTS):
        result = _fast_backward(dy, x, mean, invstd, weight, axis, num_threads, out, y)
        if result is not None:
            return result
    x, axis = v.check_input(x, axis)
    dy = v.kernel_dtype(dy, "dy")
    v.check_like(dy, x.shape, x.dtype, "dy")
    need_dx, need_dw, need_db = v.check_needs(needs)
    nt = v.check_threads(num_threads)
    xk, ak, perm = v.kernel_view(x, axis)
    outer, C, inner = v.geometry(xk.shape, ak)
    dyk = v.view_like(dy, perm)
    yk = None
    if relu:
        y = v.kernel_dtype(y, "y")
        v.check_like(y, x.shape, x.dtype, "y")
        yk = v.view_like(y, perm)
    mu = v.as_f64(mean, "mean", C)
    iv = v.as_f64(invstd, "invstd", C)
    w = None if weight is None else v.as_f64(weight, "weight", C)
    grad_dtype = v.gradient_dtype(x.dtype, weight)
    dxk = dx = None
    copy_back = False
    if need_dx:
        dxk, dx, copy_back = v.output_for(out, x, xk, perm, inputs=(dyk, yk))
    if not (need_dx or need_dw or need_db):
        return BackwardResult(None, None, None)
    sdy = np.empty(C, _F64)
    sdyx = np.empty(C, _F64)
    if xk.size:
        _k.backward(dyk, xk, dxk, outer, C, inner, mu, iv, w, need_dw, sdy, sdyx, nt, yk)
    else:
        sdy.fill(0.0)
        sdyx.fill(0.0)
    if need_dx:
        dx = v.finish_output(dxk, dx, out, copy_back, perm)
    dweight, dbias = _k.parameter_gradients(sdy, sdyx, iv, grad_dtype, need_dw, need_db)
    return BackwardResult(dx, dweight, dbias)


def _gradient_pass(gk, dyk, activation, code, slope, y, x, xk, perm, outer, C, inner, mu, iv,
                   w, bias, rk, nt):
    """Write ``g = dy * act'(z)`` into ``gk`` (kernel layout, like ``dyk``) with the inference
    kernel's post-operation in gradient mode.  z is y itself (``direct``: no affine stage) for
    the activations whose derivative is a function of their output
    (:func:`~cbn._validation.from_output`), else x through the forward's own coefficients
    (mean, invstd * weight, bias: the same bits as the forward's z) plus the residual ``rk``."""
    if v.from_output(activation, slope):
        y = v.kernel_dtype(y, "y")
        v.check_like(y, x.shape, x.dtype, "y")
        src, centre, scale, shift, res, direct = (v.view_like(y, perm), np.zeros(C),
                                                  np.ones(C), np.zeros(C), None, True)
    else:
        shift = np.zeros(C) if bias is None else v.as_f64(bias, "bias", C)
        src, centre, scale, res, direct = xk, mu, iv if w is None else iv * w, rk, False
    if xk.size:
        _k.inference(src, gk, outer, C, inner, centre, scale, shift, nt, post_act=code,
                       slope=slope, residual=res, dy=dyk, direct=direct)


def _activation_gradient(dy, x, mean, invstd, weight, bias, residual, y, activation,
                         negative_slope, axis, num_threads):
    """``dy * act'(z)`` (shape of x): the gradient at the fused activation's input, for the
    chunked and sharded backward passes (cbn.dask)."""
    code, slope = v.check_epilogue(activation, negative_slope)
    x, axis = v.check_input(x, axis)
    dy = v.kernel_dtype(dy, "dy")
    v.check_like(dy, x.shape, x.dtype, "dy")
    if activation is None:
        return dy
    v.check_fused_gradient_inputs(activation, y, residual, (True, True, True), slope)
    nt = v.check_threads(num_threads)
    xk, ak, perm = v.kernel_view(x, axis)
    outer, C, inner = v.geometry(xk.shape, ak)
    mu = v.as_f64(mean, "mean", C)
    iv = v.as_f64(invstd, "invstd", C)
    w = None if weight is None else v.as_f64(weight, "weight", C)
    rk = None if residual is None else v.residual_view(residual, x, xk, perm)
    gk, g = v.like_kernel(xk, perm, x.shape)
    _gradient_pass(gk, v.view_like(dy, perm), activation, code, slope, y, x, xk, perm, outer,
                   C, inner, mu, iv, w, bias, rk, nt)
    return g


def _dresidual_target(dresidual_out, x, xk, perm, dyk, need_dx, out):
    """Where the gradient at the activation goes when the caller gives ``dresidual_out``:
    ``(gk, dres, copy_back)`` as ``output_for`` gives them, after the overlap rule."""
    if np.may_share_memory(dresidual_out, x) or (
            need_dx and out is not None and np.may_share_memory(dresidual_out, out)):
        raise ValueError("dresidual_out must not overlap x or out")
    return v.output_for(dresidual_out, x, xk, perm, name="dresidual_out", inputs=(dyk,))


def _fused_backward(dy, x, mean, invstd, weight, bias, residual, y, axis, out, num_threads,
                    needs, activation, code, slope, dresidual_out):
    """batch_norm_backward through the post-operation stage: g = dy * act'(z) first (into
    dresidual or a temporary), then the plain backward of g."""
    x, axis = v.check_input(x, axis)
    dy = v.kernel_dtype(dy, "dy")
    v.check_like(dy, x.shape, x.dtype, "dy")
    need_dx, need_dw, need_db, need_dres = v.check_fused_gradient_inputs(activation, y, residual,
                                                                         needs, slope)
    nt = v.check_threads(num_threads)
    xk, ak, perm = v.kernel_view(x, axis)
    outer, C, inner = v.geometry(xk.shape, ak)
    dyk = v.view_like(dy, perm)
    mu = v.as_f64(mean, "mean", C)
    iv = v.as_f64(invstd, "invstd", C)
    w = None if weight is None else v.as_f64(weight, "weight", C)
    rk = None if residual is None else v.residual_view(residual, x, xk, perm)
    grad_dtype = v.gradient_dtype(x.dtype, weight)
    dxk = dx = None
    copy_back = False
    if need_dx:
        dxk, dx, copy_back = v.output_for(out, x, xk, perm, inputs=(dyk,))
    copy_g = False
    if need_dres and dresidual_out is not None:
        gk, dres, copy_g = _dresidual_target(dresidual_out, x, xk, perm, dyk, need_dx, out)
    elif need_dres:
        gk, dres = v.like_kernel(xk, perm, x.shape)
    else:
        gk, dres = (np.empty_like(xk) if need_dx or need_dw or need_db else None), None
    dweight = dbias = None
    # dresidual_out and out: both written or neither (Ctrl-C)
    with deferred_interrupt(out is not None or dresidual_out is not None):
        if gk is not None:
            _gradient_pass(gk, dyk, activation, code, slope, y, x, xk, perm, outer, C, inner,
                           mu, iv, w, bias, rk, nt)
        if need_dres:
            dres = v.finish_output(gk, dres, dresidual_out, copy_g, perm)
        if need_dx or need_dw or need_db:
            sdy = np.zeros(C, _F64)
            sdyx = np.zeros(C, _F64)
            if xk.size:
                _k.backward(gk, xk, dxk, outer, C, inner, mu, iv, w, need_dw, sdy, sdyx, nt,
                              None)
            if need_dx:
                dx = v.finish_output(dxk, dx, out, copy_back, perm)
    if need_dx or need_dw or need_db:
        dweight, dbias = _k.parameter_gradients(sdy, sdyx, iv, grad_dtype, need_dw, need_db)
    if residual is None:
        return BackwardResult(dx, dweight, dbias)
    return FusedBackwardResult(dx, dweight, dbias, dres)


def _masked_backward(dy, x, mean, invstd, weight, bias, residual, y, axis, out, num_threads,
                     needs, activation, code, slope, dresidual_out, mask, sample_weight,
                     masked_output):
    """batch_norm_backward of a masked or weighted forward (cbn/_masked.py): g = dy through
    the activation (and 0 at the padding for "zero"/"keep"), its two sums over every
    position, then dx = a g - w (b + d (x - mean)) with the element's weight w."""
    x, axis = v.check_input(x, axis)
    dy = v.kernel_dtype(dy, "dy")
    v.check_like(dy, x.shape, x.dtype, "dy")
    masked_output = M.check_masked_output(masked_output)
    if activation is not None or residual is not None:
        need_dx, need_dw, need_db, need_dres = v.check_fused_gradient_inputs(
            activation, y, residual, needs, slope)
        bias = v.check_bias_given(bias, activation, slope) if activation is not None else None
    else:
        if (needs is not _ALL_GRADIENTS and not isinstance(needs, (str, bytes))
                and hasattr(needs, "__len__") and len(needs) == 4):
            needs = v.check_needs4(needs, None)[:3]
        need_dx, need_dw, need_db = v.check_needs(needs)
        need_dres = False
    nt = v.check_threads(num_threads)
    xk, ak, perm = v.kernel_view(x, axis)
    outer, C, inner = v.geometry(xk.shape, ak)
    dyk = v.view_like(dy, perm)
    wts = M.weights_for(mask, sample_weight, x, axis, xk, perm)
    mu = v.as_f64(mean, "mean", C)
    iv = v.as_f64(invstd, "invstd", C)
    w = None if weight is None else v.as_f64(weight, "weight", C)
    rk = None if residual is None else v.residual_view(residual, x, xk, perm)
    grad_dtype = v.gradient_dtype(x.dtype, weight)
    dxk = dx = None
    copy_back = copy_g = False
    if need_dx:
        dxk, dx, copy_back = v.output_for(out, x, xk, perm, inputs=(dyk,))
    # g, the gradient at the normalization's output: a temporary (or dresidual_out) when it
    # differs from dy
    gk, dres = dyk, None
    if need_dres and dresidual_out is not None:
        gk, dres, copy_g = _dresidual_target(dresidual_out, x, xk, perm, dyk, need_dx, out)
    elif activation is not None or masked_output != "normalize" or need_dres:
        gk, dres = v.like_kernel(xk, perm, x.shape)
    # "keep" passes dy through at the padding: a copy when an output would overwrite it first
    keep = None
    if masked_output == "keep":
        keep = dyk.copy() if (np.may_share_memory(gk, dyk)  # gk is written (0 at padding)
                              or np.may_share_memory(dxk, dyk)) else dyk
    if gk is not dyk and activation is None:
        np.copyto(gk, dyk)
    total = np.broadcast_to(wts.k.sum(axis=(0, 2), dtype=_F64), (C,))
    with deferred_interrupt(out is not None or dresidual_out is not None):
        if activation is not None:
            _gradient_pass(gk, dyk, activation, code, slope, y, x, xk, perm, outer, C, inner,
                           mu, iv, w, bias, rk, nt)
        xs = xk
        if masked_output != "normalize":
            M.fill_padding(gk, None, wts, outer, C, inner, nt)
            xs = M.without_padding(xk, wts, outer, C, inner, nt)  # NaN there stays out
        sdy = np.zeros(C, _F64)
        sdyx = np.zeros(C, _F64)
        if xk.size and (need_dx or need_dw or need_db):
            _k.backward(gk, xs, None, outer, C, inner, M.finite_centre(mu, total, masked_output),
                        iv, w, True, sdy, sdyx, nt, None)
        if need_dx:
            if xk.size:
                a, b, d, centre = M.dx_coefficients(total, sdy, sdyx, mu, iv, w, masked_output)
                _k.weighted_dx(gk, xs, wts.k, dxk, outer, C, inner, a, b, d, centre, nt)
                if keep is not None:
                    M.fill_padding(dxk, keep, wts, outer, C, inner, nt)
            dx = v.finish_output(dxk, dx, out, copy_back, perm)
        if need_dres:
            dres = v.finish_output(gk, dres, dresidual_out, copy_g, perm)
    dweight, dbias = _k.parameter_gradients(sdy, sdyx, M.invstd_of_outputs(iv, total,
                                                                            masked_output),
                                            grad_dtype, need_dw, need_db)
    if residual is None:
        return BackwardResult(dx, dweight, dbias)
    return FusedBackwardResult(dx, dweight, dbias, dres if need_dres else None)


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=conv.DEFAULT, eps=1e-5, *, axis=1, out=None, num_threads=None,
               skip_nonfinite=False, activation=None, residual=None, negative_slope=None,
               convention="torch", mask=None, sample_weight=None, masked_output="normalize"):
    """Batch normalization with the semantics of ``torch.nn.functional.batch_norm``.

    In training mode (``training=True``) the input is normalized with the batch mean and
    biased batch variance, and the running statistics, if given, are updated in place with the
    unbiased variance.  In evaluation mode the running statistics are used and are required.

    Parameters
    ----------
    x : ndarray of float16, bfloat16, float32 or float64, ndim >= 2
        The input, with the channel dimension at ``axis`` (the 16-bit formats are computed
        in float32 as they load, with float64 statistics; bfloat16 is ``ml_dtypes.bfloat16``).
    running_mean, running_var : ndarray of shape (C,), optional
        Running statistics; required when ``training`` is False, updated in place otherwise.
    weight, bias : array_like of shape (C,), optional
        Affine parameters; None means 1 and 0.
    training : bool, default False
        Use (and update with) batch statistics.
    momentum : float, default: the convention's (0.1 torch, 0.99 keras, 0.9 onnx, 0.99 flax)
        Running-stat update factor, in [0, 1], in the convention's meaning (see
        ``convention``).
    eps : float, default 1e-5
        Added to the variance; finite and > 0.
    axis : int, default 1
        The channel axis.
    out : ndarray, optional
        Where to write the result: same shape and dtype as ``x``; may be ``x`` itself.
    num_threads : int, optional
        OpenMP threads; None uses ``omp_get_max_threads()``.
    skip_nonfinite : bool, default False
        Training only: channels whose batch statistics are NaN/Inf keep their running
        statistics (see :func:`batch_norm_forward`).
    activation : {None, "relu", "relu6", "leaky_relu", "silu", "gelu", "gelu_tanh"}
        The activation applied in the same pass, with the semantics of torch's functional of
        that name (``"gelu"`` the exact erf form, ``"gelu_tanh"`` torch's
        ``approximate="tanh"``), saving a full read and write of the output against a
        separate op.
    residual : array_like, optional
        Added before the activation: ``out = activation(bn(x) + residual)`` (a ResNet block's
        skip connection, oneDNN's ``fuse_norm_add_relu``), in the same pass.  Shape of ``x``,
        any float dtype (cast to that of ``x``); ``out`` may be ``residual`` itself.
    negative_slope : float, optional
        The slope of ``"leaky_relu"`` for negative inputs (default 0.01); an error with any
        other activation.
    convention : {"torch", "keras", "onnx", "flax"}, default "torch"
        The running-statistics rule of training mode (see :func:`batch_norm_forward`).
    mask, sample_weight, masked_output : optional
        Training only: statistics over the positions a mask or weights select, and the output
        at the others (see :func:`batch_norm_forward`).  Evaluation mode uses the running
        statistics for every position and refuses them.

    Returns
    -------
    ndarray
        The normalized array, dtype of ``x``.

    Raises
    ------
    TypeError
        If ``x`` or a parameter is not floating point, ``training`` is not a bool, or ``out``
        has the wrong dtype.
    ValueError
        On a bad shape or axis, ``eps <= 0``, ``momentum`` outside [0, 1], missing running
        statistics in evaluation mode, or a single value per channel in training mode.

    Examples
    --------
    >>> import numpy as np
    >>> import cbn
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]], dtype=np.float32)
    >>> rm, rv = np.zeros(2, np.float32), np.ones(2, np.float32)
    >>> y = cbn.batch_norm(x, rm, rv, training=True, momentum=0.5)
    >>> rm  # 0.5 * 0 + 0.5 * batch mean
    array([ 1., 10.], dtype=float32)
    >>> rv  # 0.5 * 1 + 0.5 * unbiased batch variance (2 and 200)
    array([  1.5, 100.5], dtype=float32)
    >>> np.round(cbn.batch_norm(x, rm, rv), 3)  # evaluation: the running statistics
    array([[0.   , 0.   ],
           [1.633, 1.995]], dtype=float32)

    See Also
    --------
    batch_norm_forward : the training pass returning the saved statistics.
    batch_norm_inference : the evaluation pass.

    Notes
    -----
    Layout: any ``ndim >= 2`` with the channel at ``axis``.  C-contiguous arrays,
    Fortran-ordered arrays and arrays contiguous in another axis order (e.g. channels-last memory
    viewed as NCHW) are processed without a copy; other strided arrays are first copied to C
    order (one extra pass).
    """
    if v.check_flag(training, "training"):
        return batch_norm_forward(
            x, weight, bias, eps=eps, running_mean=running_mean, running_var=running_var,
            momentum=momentum, axis=axis, out=out, num_threads=num_threads,
            skip_nonfinite=skip_nonfinite, activation=activation, residual=residual,
            negative_slope=negative_slope, convention=convention, mask=mask,
            sample_weight=sample_weight, masked_output=masked_output,
        ).out
    if mask is not None or sample_weight is not None or masked_output != "normalize":
        raise ValueError("mask, sample_weight and masked_output apply in training mode only: "
                         "evaluation normalizes every position with the running statistics")
    conv.check_convention(convention)
    if running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var are required when training=False")
    return batch_norm_inference(x, running_mean, running_var, weight, bias, eps=eps, axis=axis,
                                out=out, num_threads=num_threads, activation=activation,
                                residual=residual, negative_slope=negative_slope)
