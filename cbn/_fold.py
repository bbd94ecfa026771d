"""Deployment folding: batch norm with fixed statistics as a per-channel affine map.

In evaluation mode batch normalization is ``y = x * scale + shift`` per channel.  This module
computes that map (:func:`fold`), merges it into the preceding convolution or linear layer
(:func:`fold_into_conv`, :func:`fold_into_linear`, numerically the same as
``torch.nn.utils.fusion``), and provides :class:`FrozenBatchNorm`, a fixed layer that applies
the map through the one-pass inference kernel with minimal per-call overhead.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np
from numpy.typing import ArrayLike

from . import _validation as v
from ._dispatch import kernels as _k

__all__ = ["fold", "fold_into_conv", "fold_into_linear", "FrozenBatchNorm", "FoldedAffine"]

_F64 = v.F64
_RELU = _k.ACTIVATIONS["relu"]


class ResidualGradients(NamedTuple):
    """A layer's backward of ``act(bn(x) + residual)``.

    Attributes
    ----------
    dx : ndarray
        Gradient with respect to the layer's input.
    dresidual : ndarray
        Gradient with respect to the residual (the skip branch).
    """

    dx: np.ndarray
    dresidual: np.ndarray


class FoldedAffine(NamedTuple):
    """Per-channel affine map ``y = x * scale + shift`` (float64 vectors of shape (C,)).

    Attributes
    ----------
    scale : ndarray of float64, shape (C,)
        ``weight / sqrt(running_var + eps)``.
    shift : ndarray of float64, shape (C,)
        ``bias - running_mean * scale``.
    """

    scale: np.ndarray
    shift: np.ndarray


def _stats_f64(running_mean: ArrayLike, running_var: ArrayLike, weight: Optional[ArrayLike],
               bias: Optional[ArrayLike]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                   np.ndarray]:
    """Validate the batch-norm vectors and return them as float64 (C,) arrays (copies)."""
    rm = np.asarray(running_mean)
    if rm.ndim != 1:
        raise ValueError(f"running_mean must be a vector of shape (C,), got shape {rm.shape}")
    C = rm.shape[0]
    mean = np.array(v.channel_vector(rm, "running_mean", C), dtype=_F64)
    var = np.array(v.channel_vector(running_var, "running_var", C), dtype=_F64)
    v.check_running_var(var)
    w = np.ones(C, _F64) if weight is None else np.array(
        v.channel_vector(weight, "weight", C), dtype=_F64)
    b = np.zeros(C, _F64) if bias is None else np.array(
        v.channel_vector(bias, "bias", C), dtype=_F64)
    return mean, var, w, b


def fold(running_mean: ArrayLike, running_var: ArrayLike, weight: Optional[ArrayLike] = None,
         bias: Optional[ArrayLike] = None, eps: float = 1e-5) -> FoldedAffine:
    """The evaluation-mode batch norm as a per-channel affine map.

    Parameters
    ----------
    running_mean, running_var : array_like of shape (C,)
        The fixed statistics (any float dtype); ``running_var`` must be >= 0.
    weight, bias : array_like of shape (C,), optional
        Affine parameters gamma and beta; None means 1 and 0.
    eps : float, default 1e-5
        Added to the variance; finite and > 0.

    Returns
    -------
    FoldedAffine
        ``(scale, shift)``, float64 arrays of shape (C,) with
        ``scale = weight / sqrt(running_var + eps)`` and ``shift = bias - running_mean * scale``,
        so that ``batch_norm_inference(x, ...) == x * scale + shift`` per channel.

    Raises
    ------
    TypeError
        If a vector is not floating point or ``eps`` is not a number.
    ValueError
        On mismatched shapes, a negative variance or a bad ``eps``.

    Notes
    -----
    ``shift`` is the difference of two possibly large numbers; when the data has a large
    offset (``|mean| >> std``), applying ``x * scale + shift`` in float32 loses digits.
    :meth:`FrozenBatchNorm.from_stats` keeps the mean and uses the centred form instead.
    """
    eps = v.check_eps(eps)
    mean, var, w, b = _stats_f64(running_mean, running_var, weight, bias)
    scale = (1.0 / np.sqrt(var + eps)) * w
    return FoldedAffine(scale, b - mean * scale)


def _check_finite(name: str, a: np.ndarray) -> None:
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite everywhere")


def _check_layer_weight(W: Any, b: Any, C: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a conv/linear weight and bias; return W and b (float64, zeros when None)."""
    W = np.asarray(W)
    if W.dtype.kind != "f":
        raise TypeError(f"W must be a floating-point array, got dtype {W.dtype}")
    if b is None:
        b64 = np.zeros(C, _F64)
    else:
        b64 = np.array(v.channel_vector(b, "b", C), dtype=_F64)
    return W, b64


def fold_into_conv(W: ArrayLike, b: Optional[ArrayLike], running_mean: ArrayLike,
                   running_var: ArrayLike, weight: Optional[ArrayLike],
                   bias: Optional[ArrayLike], eps: float = 1e-5, *,
                   transposed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Fold an evaluation-mode batch norm into the convolution before it.

    ``bn(conv(x, W, b)) == conv(x, W_folded, b_folded)``; the results equal those of
    ``torch.nn.utils.fusion.fuse_conv_bn_weights`` (computed here in float64 and rounded once).

    An activation fused after the batch norm (``activation=``) is not part of the affine map
    and is not folded: it stays a separate step after the folded layer (e.g. a
    ``FrozenBatchNorm`` with ``activation=`` and identity statistics, or the framework's own).

    Parameters
    ----------
    W : array_like, float
        Convolution weight: shape ``(out, in / groups, *kernel)``, or for a transposed
        convolution ``(in, out / groups, *kernel)``.
    b : array_like of shape (out,), optional
        Convolution bias; None means no bias (zeros).
    running_mean, running_var : array_like of shape (out,)
        The batch norm's statistics.
    weight, bias : array_like of shape (out,), optional
        The batch norm's affine parameters; None means 1 and 0.
    eps : float, default 1e-5
        The batch norm's epsilon.
    transposed : bool, default False
        ``W`` belongs to a transposed convolution (``ConvTransposeNd``).  The number of groups
        is inferred as ``out / W.shape[1]``, so grouped transposed convolutions are folded
        correctly (``fuse_conv_bn_weights`` fails on them).

    Returns
    -------
    W_folded : ndarray
        Same shape and dtype as ``W``.
    b_folded : ndarray of shape (out,)
        The new bias, dtype of ``W``.

    Raises
    ------
    TypeError, ValueError
        On non-float arrays, a negative variance, or shapes that do not fit together.
    """
    eps = v.check_eps(eps)
    mean, var, w, bb = _stats_f64(running_mean, running_var, weight, bias)
    C = mean.shape[0]
    transposed = v.check_flag(transposed, "transposed")
    W = np.asarray(W)
    if W.ndim < 2:
        raise ValueError(f"W must have at least 2 dimensions, got shape {W.shape}")
    W, b64 = _check_layer_weight(W, b, C)
    scale = (1.0 / np.sqrt(var + eps)) * w  # rounded as torch's rsqrt(var + eps) * w
    if not transposed:
        if W.shape[0] != C:
            raise ValueError(
                f"W.shape[0] ({W.shape[0]}) must equal the batch norm's number of features "
                f"({C})")
        s = scale.reshape((C,) + (1,) * (W.ndim - 1))
        Wf = W.astype(_F64) * s
    else:
        opg = W.shape[1]  # out channels per group
        if opg == 0 or C % opg or W.shape[0] % (C // opg):
            raise ValueError(
                f"transposed W of shape {W.shape} does not fit {C} output channels: expected "
                "(in, out / groups, *kernel) with groups dividing both in and out")
        groups = C // opg
        ipg = W.shape[0] // groups  # in channels per group
        # W[g * ipg + i, j] feeds output channel g * opg + j
        s = scale.reshape(groups, 1, opg)
        Wg = W.astype(_F64).reshape((groups, ipg, opg) + W.shape[2:])
        Wf = (Wg * s.reshape((groups, 1, opg) + (1,) * (W.ndim - 2))).reshape(W.shape)
    bf = (b64 - mean) * scale + bb
    return Wf.astype(W.dtype), bf.astype(W.dtype)


def fold_into_linear(W: ArrayLike, b: Optional[ArrayLike], running_mean: ArrayLike,
                     running_var: ArrayLike, weight: Optional[ArrayLike],
                     bias: Optional[ArrayLike], eps: float = 1e-5
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Fold an evaluation-mode batch norm into the linear layer before it.

    ``bn(x @ W.T + b) == x @ W_folded.T + b_folded``; the results equal those of
    ``torch.nn.utils.fusion.fuse_linear_bn_weights`` (computed here in float64 and rounded
    once).

    An activation fused after the batch norm (``activation=``) is not part of the affine map
    and is not folded: it stays a separate step after the folded layer (e.g. a
    ``FrozenBatchNorm`` with ``activation=`` and identity statistics, or the framework's own).

    Parameters
    ----------
    W : array_like of shape (out, in), float
        Linear weight, torch layout (``y = x @ W.T + b``).
    b : array_like of shape (out,), optional
        Linear bias; None means no bias.
    running_mean, running_var : array_like of shape (out,)
        The batch norm's statistics.
    weight, bias : array_like of shape (out,), optional
        The batch norm's affine parameters; None means 1 and 0.
    eps : float, default 1e-5
        The batch norm's epsilon.

    Returns
    -------
    W_folded : ndarray of shape (out, in)
        Dtype of ``W``.
    b_folded : ndarray of shape (out,)
        Dtype of ``W``.

    Raises
    ------
    TypeError, ValueError
        On non-float arrays, a negative variance, or shapes that do not fit together.
    """
    W = np.asarray(W)
    if W.ndim != 2:
        raise ValueError(f"W must have shape (out, in), got shape {W.shape}")
    return fold_into_conv(W, b, running_mean, running_var, weight, bias, eps)


def _apply_affine(x: Any, centre: np.ndarray, scale: np.ndarray, shift: np.ndarray, axis: int,
                  out: Optional[np.ndarray], nt: int, name: str = "x",
                  relu: bool = False, post: Optional[tuple] = None) -> np.ndarray:
    """``(x - centre) * scale + shift`` per channel through the inference kernel; ``post`` =
    ``(code, slope, residual, dy)``: through the post-operation stage instead (``act(. +
    residual)``, or with ``dy`` the gradient ``dy * act'(. + residual)``)."""
    x, axis = v.check_input(x, axis, name)
    xk, ak, perm = v.kernel_view(x, axis)
    outer, C, inner = v.geometry(xk.shape, ak)
    if C != scale.shape[0]:
        raise ValueError(
            f"{name} has {C} channels on axis {axis} but the layer has num_features="
            f"{scale.shape[0]}")
    if post is None:
        yk, y, copy_back = v.output_for(out, x, xk, perm)
        if xk.size:
            _k.inference(xk, yk, outer, C, inner, centre, scale, shift, nt, relu)
        return v.finish_output(yk, y, out, copy_back, perm)
    code, slope, residual, dy = post
    rk = None if residual is None else v.residual_view(residual, x, xk, perm)
    dyk = None
    if dy is not None:
        dy = v.kernel_dtype(dy, "dy")
        v.check_like(dy, x.shape, x.dtype, "dy")
        dyk = v.view_like(dy, perm)
    yk, y, copy_back = v.output_for(out, x, xk, perm,
                                    inputs=tuple(a for a in (rk, dyk) if a is not None))
    if xk.size:
        _k.inference(xk, yk, outer, C, inner, centre, scale, shift, nt, post_act=code,
                       slope=slope, residual=rk, dy=dyk)
    return v.finish_output(yk, y, out, copy_back, perm)


class FrozenBatchNorm:
    """A batch norm with fixed statistics: ``y = x * scale + shift`` per channel.

    The per-channel vectors are computed once and kept as float64; each call runs the fused
    one-pass inference kernel with little Python overhead.  Layers made by
    :meth:`from_layer`, :meth:`from_stats` or :meth:`BatchNorm.freeze` keep the running mean as
    a *centre* and evaluate ``(x - centre) * scale + bias``, which avoids cancellation for
    float32 data with large offsets; a layer built directly from ``(scale, shift)`` has
    centre 0.

    Parameters
    ----------
    scale, shift : array_like of shape (C,)
        The affine map, e.g. from :func:`fold`.
    axis : int, default 1
        The channel axis of the inputs (-1 for channels-last).
    num_threads : int, optional
        OpenMP threads; None uses ``omp_get_max_threads()``.
    activation : {None, "relu", "relu6", "leaky_relu", "silu", "gelu", "gelu_tanh"}
        The activation applied in the same pass (after ``residual`` when a call gives one).
    negative_slope : float, optional
        ``"leaky_relu"``'s slope (default 0.01).

    Attributes
    ----------
    num_features : int
        Number of channels C.
    axis : int
        The channel axis.
    centre, scale, offset : ndarray of float64, shape (C,)
        The map is ``(x - centre) * scale + offset``.
    shift : ndarray of float64, shape (C,)
        ``offset - centre * scale`` (read-only property).

    Examples
    --------
    >>> import numpy as np, cbn
    >>> frozen = cbn.FrozenBatchNorm(*cbn.fold(np.zeros(3), np.ones(3), eps=1e-5))
    >>> frozen(np.ones((2, 3), np.float32)).shape
    (2, 3)
    """

    __slots__ = ("num_features", "axis", "_centre", "_scale", "_offset", "_num_threads", "_nt",
                 "_activation", "_negative_slope", "_code", "_slope")

    def __init__(self, scale: ArrayLike, shift: ArrayLike, *, axis: int = 1,
                 num_threads: Optional[int] = None, activation: Optional[str] = None,
                 negative_slope: Optional[float] = None) -> None:
        sc = np.asarray(scale)
        if sc.ndim != 1:
            raise ValueError(f"scale must be a vector of shape (C,), got shape {sc.shape}")
        C = sc.shape[0]
        self._init(np.zeros(C, _F64), v.as_f64(sc, "scale", C).copy(),
                   v.as_f64(shift, "shift", C).copy(), axis, num_threads, activation,
                   negative_slope)

    def _init(self, centre: np.ndarray, scale: np.ndarray, offset: np.ndarray, axis: int,
              num_threads: Optional[int], activation: Optional[str] = None,
              negative_slope: Optional[float] = None) -> None:
        v.check_axis(axis, 1 << 30)  # type check only; the range is checked per call
        # C-contiguous float64, as the call's fast path (_core.fast_apply) reads them
        centre, scale, offset = (np.ascontiguousarray(a, _F64) for a in (centre, scale, offset))
        for name, a in (("centre", centre), ("scale", scale), ("offset", offset)):
            _check_finite(name, a)
            a.flags.writeable = False
        self._code, self._slope = v.check_epilogue(activation, negative_slope)
        self._activation = activation
        self._negative_slope = self._slope if activation == "leaky_relu" else None
        self.num_features = int(scale.shape[0])
        self.axis = int(axis)
        self._centre = centre
        self._scale = scale
        self._offset = offset
        self.num_threads = num_threads

    @classmethod
    def _from_centred(cls, centre: np.ndarray, scale: np.ndarray, offset: np.ndarray,
                      axis: int, num_threads: Optional[int] = None,
                      activation: Optional[str] = None,
                      negative_slope: Optional[float] = None) -> "FrozenBatchNorm":
        self = cls.__new__(cls)
        self._init(np.ascontiguousarray(centre, _F64).copy(),
                   np.ascontiguousarray(scale, _F64).copy(),
                   np.ascontiguousarray(offset, _F64).copy(), axis, num_threads, activation,
                   negative_slope)
        return self

    @classmethod
    def from_stats(cls, running_mean: ArrayLike, running_var: ArrayLike,
                   weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None,
                   eps: float = 1e-5, *, axis: int = 1,
                   num_threads: Optional[int] = None, activation: Optional[str] = None,
                   negative_slope: Optional[float] = None) -> "FrozenBatchNorm":
        """A frozen layer from batch-norm statistics, keeping the mean as centre.

        Parameters
        ----------
        running_mean, running_var : array_like of shape (C,)
            The statistics; ``running_var`` must be >= 0.
        weight, bias : array_like of shape (C,), optional
            Affine parameters; None means 1 and 0.
        eps : float, default 1e-5
            Added to the variance.
        axis : int, default 1
            The channel axis.
        num_threads : int, optional
            OpenMP threads; None uses ``omp_get_max_threads()``.
        activation : {None, "relu", "relu6", "leaky_relu", "silu", "gelu", "gelu_tanh"}
            The activation fused into the same pass (see :func:`cbn.batch_norm_inference`).
        negative_slope : float, optional
            ``"leaky_relu"``'s slope (default 0.01).

        Returns
        -------
        FrozenBatchNorm
            Computes the same as :func:`cbn.batch_norm_inference` with these arguments.
        """
        eps = v.check_eps(eps)
        mean, var, w, b = _stats_f64(running_mean, running_var, weight, bias)
        for name, a in (("running_mean", mean), ("running_var", var), ("weight", w),
                        ("bias", b)):
            _check_finite(name, a)
        # batch_norm_inference's scale, by the same function: bit-identical results
        return cls._from_centred(mean, _k.inference_scale(w, var, eps), b, axis, num_threads,
                                 activation, negative_slope)

    @classmethod
    def from_onnx(cls, model: Any, node: Optional[str] = None, *,
                  num_threads: Optional[int] = None) -> "FrozenBatchNorm":
        """The inference transform of a ``BatchNormalization`` node of an ONNX model.

        Parameters
        ----------
        model : onnx.ModelProto or path-like
            The model (``onnx`` must be installed: ``pip install onnx``).
        node : str, optional
            The node's name; None takes the model's only BatchNormalization node.
        num_threads : int, optional
            OpenMP threads for the kernel.

        Returns
        -------
        FrozenBatchNorm
            ``(x - input_mean) / sqrt(input_var + epsilon) * scale + B`` on channel axis 1, as
            ONNX defines the node, with ``epsilon`` the float32 value the model stores.

        Raises
        ------
        ImportError
            Without ``onnx``.
        ValueError
            If the model has no such node (or several, and ``node`` is None), the node's
            parameters are not constants of the model, or the node is in training mode.
        """
        from ._onnx import read_node

        p = read_node(model, node)
        if p["training"]:
            raise ValueError(f"node {p['name']!r} has training_mode=1 (it normalizes with the "
                             f"batch statistics): a FrozenBatchNorm applies the stored ones; "
                             f"use cbn.BatchNorm.from_onnx")
        return cls.from_stats(p["input_mean"], p["input_var"], p["scale"], p["B"],
                              p["epsilon"], axis=1, num_threads=num_threads)

    @classmethod
    def from_layer(cls, layer: Any) -> "FrozenBatchNorm":
        """A frozen copy of a :class:`cbn.BatchNorm`'s evaluation-mode transform.

        Parameters
        ----------
        layer : BatchNorm
            A layer with running statistics (``track_running_stats=True``).

        Returns
        -------
        FrozenBatchNorm
            Same ``axis`` and ``num_threads`` as the layer; later changes to the layer do not
            affect it.

        Raises
        ------
        ValueError
            If the layer has no running statistics.
        """
        if layer.running_mean is None or layer.running_var is None:
            raise ValueError(
                "cannot freeze a layer without running statistics (track_running_stats=False)")
        return cls.from_stats(layer.running_mean, layer.running_var, layer.weight, layer.bias,
                              layer.eps, axis=layer.axis, num_threads=layer.num_threads,
                              activation=getattr(layer, "activation", None),
                              negative_slope=getattr(layer, "negative_slope", None))

    @property
    def num_threads(self) -> Optional[int]:
        """OpenMP threads per call (None: ``omp_get_max_threads()``); may be reassigned."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: Optional[int]) -> None:
        self._nt = v.check_threads(value)
        self._num_threads = value

    @property
    def centre(self) -> np.ndarray:
        """The centre of the map (float64, read-only)."""
        return self._centre

    @property
    def scale(self) -> np.ndarray:
        """The per-channel scale (float64, read-only)."""
        return self._scale

    @property
    def offset(self) -> np.ndarray:
        """The offset after scaling (float64, read-only)."""
        return self._offset

    def __getstate__(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__ if k != "_nt"}

    def __setstate__(self, state: dict) -> None:
        """Unpickling (and copying) keeps the layer frozen: the vectors are validated again and
        read-only."""
        self._init(np.array(state["_centre"], _F64), np.array(state["_scale"], _F64),
                   np.array(state["_offset"], _F64), state["axis"], state["_num_threads"],
                   state["_activation"], state["_negative_slope"])

    @property
    def activation(self) -> Optional[str]:
        """The fused activation (read-only: freeze the layer again to change it)."""
        return self._activation

    @property
    def negative_slope(self) -> Optional[float]:
        """``"leaky_relu"``'s slope, else None (read-only)."""
        return self._negative_slope

    @property
    def shift(self) -> np.ndarray:
        """``offset - centre * scale``: the map as ``x * scale + shift``."""
        return self.offset - self.centre * self.scale

    def __call__(self, x: ArrayLike, *, residual: Optional[ArrayLike] = None,
                 out: Optional[np.ndarray] = None) -> np.ndarray:
        """Apply the frozen transform (then ``+ residual`` and the activation, in one pass).

        Parameters
        ----------
        x : ndarray of float16, bfloat16, float32 or float64, ndim >= 2
            The input, with ``num_features`` channels at ``self.axis``.
        residual : array_like, optional
            Added before the activation (shape of ``x``, cast to its dtype).
        out : ndarray, optional
            Where to write the result: same shape and dtype as ``x``; may be ``x`` or
            ``residual`` itself.

        Returns
        -------
        ndarray
            ``act((x - centre) * scale + offset + residual)`` per channel, dtype of ``x``.

        Raises
        ------
        TypeError, ValueError
            On a non-float input, a bad axis or a channel count other than ``num_features``,
            or a residual of another shape.
        """
        if residual is None and self._code <= _RELU:
            y = _k.fast_apply(x, self._centre, self._scale, self._offset, self.axis, self._nt,
                              out, self._code)
            if y is not None:
                return y
            return _apply_affine(x, self.centre, self.scale, self.offset, self.axis, out,
                                 self._nt, relu=self._code)
        return _apply_affine(x, self.centre, self.scale, self.offset, self.axis, out, self._nt,
                             post=(self._code, self._slope, residual, None))

    def backward(self, dy: ArrayLike, *, out: Optional[np.ndarray] = None,
                 y: Optional[np.ndarray] = None, x: Optional[ArrayLike] = None,
                 residual: Optional[ArrayLike] = None) -> Any:
        """Gradient with respect to the input: ``dx = g * scale`` per channel, ``g = dy *
        act'(z)`` at the activation's input ``z``.

        Parameters
        ----------
        dy : ndarray of float16, bfloat16, float32 or float64
            Gradient of the loss with respect to the output.
        out : ndarray, optional
            Where to write ``dx``; may be ``dy`` itself.
        y : ndarray, optional
            The forward output; required with ``"relu"``, ``"relu6"`` and ``"leaky_relu"``
            (their derivative is a function of it).
        x, residual : array_like, optional
            The forward input and residual: ``x`` is required with ``"silu"``, ``"gelu"`` and
            ``"gelu_tanh"``, whose input ``z`` is recomputed; with a residual the result is the
            pair ``(dx, dresidual)``.

        Returns
        -------
        ndarray or ResidualGradients
            ``dx``, shape and dtype of ``dy``; ``(dx, dresidual)`` when ``residual`` is given.
        """
        zero = np.zeros(self.num_features, _F64)
        g = dy
        if self._code or residual is not None:
            v.check_fused_gradient_inputs(self.activation, y, residual, (True, True, True),
                                          self._slope)
            if v.from_output(self.activation, self._slope):
                g = _apply_affine(y, zero, np.ones(self.num_features), zero, self.axis, None,
                                  self._nt, "y", post=(self._code, self._slope, None, dy))
            elif self.activation is not None:
                if x is None:
                    raise ValueError(f"x (the forward input) is required with activation="
                                     f"{self.activation!r}")
                g = _apply_affine(x, self.centre, self.scale, self.offset, self.axis, None,
                                  self._nt, post=(self._code, self._slope, residual, dy))
        if out is None and residual is None and g is not dy:
            out = g  # dx overwrites the activation's gradient, our own temporary
        dx = _apply_affine(g, zero, self.scale, zero, self.axis, out, self._nt, "dy")
        if residual is None:
            return dx
        return ResidualGradients(dx, np.array(g, copy=True) if g is dy else np.asarray(g))

    def __repr__(self) -> str:
        axis = "" if self.axis == 1 else f", axis={self.axis}"
        act = "" if self.activation is None else f", activation={self.activation!r}"
        if self.activation == "leaky_relu" and self.negative_slope != 0.01:
            act += f", negative_slope={self.negative_slope!r}"
        return f"FrozenBatchNorm({self.num_features}{axis}{act})"
