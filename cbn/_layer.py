"""``cbn.BatchNorm``: a stateful batch-norm layer with PyTorch semantics on NumPy arrays.

Pure Python on top of :func:`cbn.batch_norm_forward`, :func:`cbn.batch_norm_backward` and
:func:`cbn.batch_norm_inference`.  The running-statistics update follows one of three
framework conventions (``"torch"``, ``"keras"``, ``"onnx"``, ``"flax"``: cbn/_conventions.py),
whose names its state dicts also speak.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _conventions as conv
from . import _masked as M
from . import _validation as v
from ._batch_norm import batch_norm_backward, batch_norm_forward, batch_norm_inference
from ._dispatch import kernels as _k
from ._fold import FrozenBatchNorm, ResidualGradients, _apply_affine

__all__ = ["BatchNorm", "IncompatibleKeys"]

_F64 = v.F64
#: The attributes validated and converted on assignment (BatchNorm.__setattr__).
_ARRAY_ATTRS = frozenset({"weight", "bias", "running_mean", "running_var", "grad_weight",
                          "grad_bias", "num_batches_tracked"})
_DEFAULT_MOMENTUM: Any = conv.DEFAULT
#: Default ``momentum`` of each convention (in that convention's own meaning).
DEFAULT_MOMENTUM = conv.DEFAULT_MOMENTUM


class IncompatibleKeys(NamedTuple):
    """What :meth:`BatchNorm.load_state_dict` did not load (as torch's ``_IncompatibleKeys``).

    Attributes
    ----------
    missing_keys : list of str
        Keys the layer has but the state dict lacked.
    unexpected_keys : list of str
        Keys in the state dict the layer does not have.
    """

    missing_keys: list
    unexpected_keys: list


class BatchNorm:
    """Batch normalization layer with the semantics of ``torch.nn.BatchNorm{1,2,3}d``.

    One class for any number of dimensions: the input has ``ndim >= 2`` with ``num_features``
    channels at ``axis``.  In training mode the input is normalized with the batch statistics
    and the running statistics are updated; in evaluation mode the running statistics are used
    (or the batch statistics when ``track_running_stats=False``).  :meth:`backward` gives the
    input gradient and accumulates the parameter gradients.

    Parameters
    ----------
    num_features : int
        Number of channels C.
    eps : float, default 1e-5
        Added to the variance; finite and > 0.
    momentum : float or None, default: the convention's (0.1 torch, 0.99 keras, 0.9 onnx,
        0.99 flax)
        Running-statistics update factor, in [0, 1], in the meaning of ``convention``:
        ``"torch"``: ``running = (1 - momentum) * running + momentum * batch``;
        ``"keras"`` / ``"onnx"`` / ``"flax"``:
        ``running = momentum * running + (1 - momentum) * batch``.
        None gives the cumulative moving average over all training batches (the batch weight is
        ``1 / num_batches_tracked``), as in torch.
    affine : bool, default True
        Learnable per-channel ``weight`` (initialised to 1) and ``bias`` (0).
    bias : bool, default True
        With ``affine``, whether there is a ``bias`` (torch >= 2.13's ``bias`` keyword);
        False leaves ``bias`` None (no shift).
    track_running_stats : bool, default True
        Keep ``running_mean`` (0), ``running_var`` (1) and ``num_batches_tracked`` (0).  When
        False they are None and the batch statistics are used in evaluation mode too.
    axis : int, default 1
        The channel axis of the inputs (-1 for channels-last).
    dtype : dtype, default float32
        Dtype of the parameters and running statistics (float32 or float64).  Inputs may be
        float16, bfloat16, float32 or float64 independently of it; the output has the input's dtype.
    convention : {"torch", "keras", "onnx", "flax"}, default "torch"
        How the running statistics are updated.  ``"torch"`` stores the *unbiased* batch
        variance ``var * n / (n - 1)``; the others store the *biased* one.  The
        normalization itself is the same in all.  Keras's ``trainable=False`` and flax's
        ``use_running_average=True`` are :meth:`eval` (the running statistics in every
        call; :meth:`backward` then gives the gradient of that fixed affine map).
    num_threads : int, optional
        OpenMP threads for the kernels; None uses ``omp_get_max_threads()``.
    activation : {None, "relu", "relu6", "leaky_relu", "silu", "gelu", "gelu_tanh"}
        The activation fused into the same pass, forward, evaluation and backward (see
        :func:`cbn.batch_norm_forward`).  Backward reads the saved forward output (for relu,
        relu6, leaky_relu) or the saved input and residual (silu, gelu, gelu_tanh): do not
        modify them before calling backward.
    negative_slope : float, optional
        ``"leaky_relu"``'s slope for negative inputs (default 0.01).

    Attributes
    ----------
    weight, bias : ndarray of shape (C,) or None
        Affine parameters (None when ``affine=False``; ``bias`` None when ``bias=False``).
    running_mean, running_var : ndarray of shape (C,) or None
        Running statistics (None when ``track_running_stats=False``).
    num_batches_tracked : ndarray of int64, shape () or None
        Training forward passes seen (None when ``track_running_stats=False``).
    grad_weight, grad_bias : ndarray of shape (C,) or None
        Accumulated gradients; None until the first :meth:`backward` and after
        :meth:`zero_grad`.
    training : bool
        Training mode (True after construction, as in torch).

    Raises
    ------
    TypeError, ValueError
        On a bad argument, e.g. ``num_features < 1``, ``eps <= 0``, ``momentum`` outside
        [0, 1] or an unknown ``convention``.

    Notes
    -----
    The layer keeps a reference to the last training input for :meth:`backward` (as torch's
    autograd saves it): do not modify it in place between the forward and the backward call.

    Threads: training steps of threads sharing a layer are serialised (a lock around the
    statistics, the counter and the saved input), but :meth:`backward` uses the last
    forward's saved input, so threads that each run forward and backward need a layer each.

    Examples
    --------
    >>> import numpy as np, cbn
    >>> bn = cbn.BatchNorm(3)
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32)
    >>> y = bn(x)
    >>> dx = bn.backward(np.ones_like(y))
    >>> bn.eval()
    BatchNorm(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    """

    def __init__(self, num_features: int, eps: float = 1e-5,
                 momentum: Optional[float] = _DEFAULT_MOMENTUM, affine: bool = True,
                 track_running_stats: bool = True, *, bias: bool = True, axis: int = 1,
                 dtype: DTypeLike = np.float32, convention: str = "torch",
                 num_threads: Optional[int] = None, activation: Optional[str] = None,
                 negative_slope: Optional[float] = None) -> None:
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)):
            raise TypeError(
                f"num_features must be a positive integer, got {type(num_features).__name__}")
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        conv.check_convention(convention)
        if momentum is _DEFAULT_MOMENTUM:
            momentum = DEFAULT_MOMENTUM[convention]
        elif momentum is not None:
            momentum = v.check_momentum(momentum)
        dt = np.dtype(dtype)
        if dt not in (v.F32, v.F64):
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        v.check_axis(axis, 1 << 30)
        v.check_threads(num_threads)
        _, slope = v.check_epilogue(activation, negative_slope)
        self.activation = activation
        self.negative_slope = slope if activation == "leaky_relu" else None
        self.num_features = int(num_features)
        self.eps = v.check_eps(eps)
        self.momentum = momentum
        self.affine = v.check_flag(affine, "affine")
        self.track_running_stats = v.check_flag(track_running_stats, "track_running_stats")
        bias = v.check_flag(bias, "bias")
        self.axis = int(axis)
        self.dtype = dt
        self.convention = convention
        self.num_threads = num_threads
        self.training = True
        C = self.num_features
        self.weight: Optional[np.ndarray] = np.ones(C, dt) if self.affine else None
        self.bias: Optional[np.ndarray] = np.zeros(C, dt) if self.affine and bias else None
        self.running_mean: Optional[np.ndarray] = None
        self.running_var: Optional[np.ndarray] = None
        self.num_batches_tracked: Optional[np.ndarray] = None
        if self.track_running_stats:
            self.running_mean = np.zeros(C, dt)
            self.running_var = np.ones(C, dt)
            self.num_batches_tracked = np.array(0, np.int64)
        self.grad_weight: Optional[np.ndarray] = None
        self.grad_bias: Optional[np.ndarray] = None
        self._saved: Optional[tuple] = None
        self._lock = threading.Lock()
        self._keras_scale = True  # Keras's scale flag: False for from_keras(scale=False)

    # ------------------------------------------------------------------ array attributes
    def __setattr__(self, name: str, value: Any) -> None:
        """Assigning a parameter, a statistic, a gradient or the counter validates and
        converts it (``bn.weight = [1., 2., 3.]`` stores a float array of the layer's dtype;
        a wrong shape or a non-numeric value is an error), so the layer's arrays stay arrays
        of shape (C,) (the counter an integer scalar array).  A float ndarray of shape (C,), or
        an integer 0-d one for the counter, is kept as given (the layer then updates that
        array); None removes the array."""
        if name in _ARRAY_ATTRS and "dtype" in self.__dict__:
            value = self._checked_array(name, value)
        object.__setattr__(self, name, value)

    def _checked_array(self, name: str, value: Any) -> Any:
        if value is None:
            return None
        if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
            value = value.detach().cpu().numpy()
        if name == "num_batches_tracked":
            a = np.asarray(value)
            if a.shape != () or a.dtype.kind not in "iu":
                raise TypeError(f"num_batches_tracked must be an integer scalar, got "
                                f"{a.dtype} of shape {a.shape}")
            # an integer array is kept (the step counts in it, or refuses a read-only one)
            return value if isinstance(value, np.ndarray) else np.array(a, np.int64)
        C = self.num_features
        if (isinstance(value, np.ndarray) and type(value) is np.ndarray
                and v.is_float_dtype(value.dtype) and value.shape == (C,)):
            return value
        a = np.asarray(value)
        if a.shape != (C,):
            raise ValueError(f"{name} must have shape ({C},) to match num_features, got "
                             f"{a.shape}")
        if not (v.is_float_dtype(a.dtype) or a.dtype.kind in "iu"):
            raise TypeError(f"{name} must be a float array of shape ({C},), got dtype "
                            f"{a.dtype}")
        return np.array(a, self.dtype)

    # ------------------------------------------------------------------ modes and state
    def train(self, mode: bool = True) -> "BatchNorm":
        """Set training mode (``mode=True``) or evaluation mode.

        Parameters
        ----------
        mode : bool, default True
            True for training, False for evaluation.

        Returns
        -------
        BatchNorm
            ``self``.
        """
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        return self

    def eval(self) -> "BatchNorm":
        """Set evaluation mode; the same as ``train(False)``.

        Returns
        -------
        BatchNorm
            ``self``.
        """
        return self.train(False)

    def reset_running_stats(self) -> None:
        """Set ``running_mean`` to 0, ``running_var`` to 1 and ``num_batches_tracked`` to 0."""
        if self.track_running_stats:
            self.running_mean.fill(0)
            self.running_var.fill(1)
            self.num_batches_tracked.fill(0)

    def reset_parameters(self) -> None:
        """Reset the running statistics and set ``weight`` to 1 and ``bias`` to 0."""
        self.reset_running_stats()
        if self.weight is not None:
            self.weight.fill(1)
        if self.bias is not None:
            self.bias.fill(0)

    def zero_grad(self) -> None:
        """Drop the accumulated gradients (set them to None, like torch's ``set_to_none``).

        Gradients accumulate over :meth:`backward` calls, also over two calls after one
        forward (as torch's ``.grad`` with ``retain_graph=True``): call this between steps.
        """
        self.grad_weight = None
        self.grad_bias = None

    # ------------------------------------------------------------------ forward / backward
    def _check_channels(self, x: Any) -> np.ndarray:
        x, axis = v.check_input(x, self.axis)
        if x.shape[axis] != self.num_features:
            raise ValueError(
                f"input has {x.shape[axis]} channels on axis {self.axis} (shape {x.shape}) but "
                f"the layer has num_features={self.num_features}")
        return x

    def _update_factor(self) -> float:
        """The batch weight of this training step's running update (after counting it)."""
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked + 1)
        return conv.update_factor(self.convention, self.momentum)

    def forward(self, x: ArrayLike, *, residual: Optional[ArrayLike] = None,
                out: Optional[np.ndarray] = None, mask: Optional[ArrayLike] = None,
                sample_weight: Optional[ArrayLike] = None,
                masked_output: str = "normalize") -> np.ndarray:
        """Normalize ``x``; in training mode also update the running statistics.

        Parameters
        ----------
        x : ndarray of float16, bfloat16, float32 or float64, ndim >= 2
            The input, with ``num_features`` channels at ``axis``.
        residual : array_like, optional
            Added before the activation, in the same pass: ``act(bn(x) + residual)`` (a
            ResNet block's skip connection); :meth:`backward` then also returns its gradient.
            ``out`` may be the residual, except with an activation whose backward recomputes
            its input from it (silu, gelu, gelu_tanh, leaky_relu with a negative slope).
        out : ndarray, optional
            Where to write the result: same shape and dtype as ``x``.  It may be ``x`` itself
            only in evaluation mode with running statistics, and :meth:`backward` then gives
            ``dx`` only (with affine parameters it raises, as the input is gone).
        mask, sample_weight : array_like, optional
            Training mode: the batch statistics (and the running statistics' update) are over
            the positions the mask or weights select, as in :func:`cbn.batch_norm_forward`
            (shapes: ``x``'s without the channel axis, ``x``'s own, or broadcastable).
            Evaluation mode with running statistics, as Keras: they do not change the
            statistics, only ``masked_output`` applies.  Kept for :meth:`backward`.
        masked_output : {"normalize", "zero", "keep"}, default "normalize"
            With a mask or weights, the output where the weight is 0: normalized like the
            rest, 0, or ``x`` unchanged.  A ``numpy.ma.MaskedArray`` ``x`` brings its own
            mask (True: hidden, the complement of ``mask``); the output and :meth:`backward`'s
            ``dx`` are then MaskedArrays hiding the same values.

        Returns
        -------
        ndarray
            The normalized array, dtype of ``x``.

        Raises
        ------
        TypeError
            If ``x`` is not float32/float64.
        ValueError
            If the channel count differs from ``num_features``, or in training mode with a
            single value per channel.
        """
        hidden = None
        if isinstance(x, np.ma.MaskedArray):  # its mask is the call's
            x, mask, hidden = M.unmask(x, mask, sample_weight, self.axis)
        x = self._check_channels(x)
        nt = self.num_threads
        masked = None
        if mask is not None or sample_weight is not None:
            masked = dict(mask=mask, sample_weight=sample_weight,
                          masked_output=M.check_masked_output(masked_output))
        elif masked_output != "normalize":
            M.check_masked_output(masked_output)
            raise ValueError("masked_output applies with mask= or sample_weight=")
        if hidden is not None:
            return self._forward_masked_array(x, hidden, residual, out, masked)
        # the activation of this call, kept for backward (attributes may change later)
        act = ((None, 0, 0.0) if self.activation is None and self.negative_slope is None
               else (self.activation, *v.check_epilogue(self.activation, self.negative_slope)))
        post = dict(activation=self.activation, residual=residual,
                    negative_slope=self.negative_slope)
        smooth = self.activation is not None and not v.from_output(act[0], act[2])
        if (smooth and residual is not None and out is not None
                and np.may_share_memory(out, residual)):
            raise ValueError(f"out must not overlap residual with activation="
                             f"{self.activation!r} (backward recomputes from it)")
        use_running = not self.training and self.track_running_stats
        if use_running:
            padding = None
            if masked is not None:
                padding = M.padding_of(x, self.axis, mask, sample_weight)
                if masked["masked_output"] == "keep" and out is not None and np.may_share_memory(out, x):
                    raise ValueError("out must not overlap x with masked_output='keep'")
            y = batch_norm_inference(x, self.running_mean, self.running_var, self.weight,
                                     self.bias, eps=self.eps, axis=self.axis, out=out,
                                     num_threads=nt, **post)
            if padding is not None and masked["masked_output"] != "normalize":
                np.copyto(y, 0 if masked["masked_output"] == "zero" else x, where=padding)
                masked["padding"] = padding
            # out=x overwrites the input: dx is still available, parameter gradients are not
            kept = None if out is not None and np.may_share_memory(out, x) else x
            with self._lock:
                self._saved = ("eval", kept, x.shape, x.dtype, self._saved_output(y, act),
                               residual, masked, act)
            return y
        if out is not None and np.may_share_memory(out, x):
            raise ValueError("out must not overlap x in training mode (backward needs x)")
        with self._lock:  # one training step at a time: statistics, counter, saved input
            return self._train_step(x, out, nt, post, act, residual, masked)

    def _forward_masked_array(self, x: np.ndarray, hidden: np.ndarray, residual: Any,
                              out: Optional[np.ndarray], masked: dict) -> np.ma.MaskedArray:
        """forward of a numpy.ma.MaskedArray: its mask as ``mask``, the output (and backward's
        dx) a MaskedArray hiding the same values."""
        y = self.forward(x, residual=residual, out=out, mask=masked["mask"],
                         masked_output=masked["masked_output"])
        with self._lock:
            self._saved[-2]["hidden"] = hidden
        return M.masked_like(y, hidden)

    def _train_step(self, x: np.ndarray, out: Optional[np.ndarray], nt: Optional[int],
                    post: dict, act: tuple, residual: Any,
                    masked: Optional[dict] = None) -> np.ndarray:
        """The training-mode forward (or evaluation without running statistics), under the
        layer's lock."""
        update = self.training and self.track_running_stats
        kw = {} if masked is None else masked
        if not update:
            r = batch_norm_forward(x, self.weight, self.bias, eps=self.eps, axis=self.axis,
                                   out=out, num_threads=nt, **post, **kw)
            bm = bv = momentum = None
        else:
            # The batch mean and unbiased variance var * n / (n - 1) go to float64 scratch
            # (momentum 1 writes them exactly), and the layer's statistics change only in
            # commit_step, with the counter and the saved input: the step is all or nothing
            # (Ctrl-C included).  The checks batch_norm_forward would apply to the running
            # statistics come first, before anything is written.
            momentum = self._update_factor()
            v.check_running_stats(self.running_mean, self.running_var, momentum,
                                  self.num_features)
            bm = np.zeros(self.num_features, _F64)
            bv = np.zeros(self.num_features, _F64)
            unbiased = conv.stores_unbiased(self.convention)
            if masked is not None:  # the batch statistics themselves, in the layer's variance
                kw = dict(masked, convention="torch" if unbiased else "keras",
                          momentum=1.0 if unbiased else 0.0)
            else:
                kw = dict(momentum=1.0)
            r = batch_norm_forward(x, self.weight, self.bias, eps=self.eps, running_mean=bm,
                                   running_var=bv, axis=self.axis, out=out,
                                   num_threads=nt, **post, **kw)
            n = x.size // self.num_features
            if n == 0:  # an empty batch leaves the statistics alone (as in torch)
                momentum = None
            elif not unbiased and masked is None:  # the biased variance, no cancellation
                bv = bv * ((n - 1.0) / n)
        saved = ("train", x, r.mean, r.invstd, self._saved_output(r.out, act), residual,
                 masked, act)
        _k.commit_step(self, saved, self.running_mean, self.running_var, bm, bv, momentum,
                       self.num_batches_tracked if update else None)
        return r.out

    __call__ = forward

    @staticmethod
    def _saved_output(y: np.ndarray, act: tuple) -> Optional[np.ndarray]:
        """The forward output, kept when backward takes the activation's derivative from it
        (act: the call's activation, code and slope)."""
        return y if act[0] is not None and v.from_output(act[0], act[2]) else None

    def backward(self, dy: ArrayLike, *, out: Optional[np.ndarray] = None) -> Any:
        """Gradient with respect to the last forward input; accumulates the parameter gradients.

        After a training-mode forward (or an evaluation-mode one without running statistics)
        this is the exact gradient through the batch statistics.  After an evaluation-mode
        forward with running statistics it is the gradient of the fixed affine map:
        ``dx = dy * weight / sqrt(running_var + eps)``, ``grad_weight += sum(dy * xhat)`` with
        ``xhat = (x - running_mean) / sqrt(running_var + eps)``, ``grad_bias += sum(dy)``,
        exactly what torch's autograd gives in eval mode (e.g. for fine-tuning with frozen
        statistics).  The running statistics read are those of the backward call.

        Parameters
        ----------
        dy : ndarray
            Gradient of the loss with respect to the forward output: shape and dtype of the
            forward input.
        out : ndarray, optional
            Where to write ``dx``; may be ``dy`` itself.

        Returns
        -------
        ndarray or ResidualGradients
            ``dx``, shape and dtype of the forward input; ``(dx, dresidual)`` when the forward
            had a residual.

        Raises
        ------
        RuntimeError
            If no forward pass was made.
        TypeError, ValueError
            If ``dy`` does not match the forward input.

        Notes
        -----
        ``grad_weight`` and ``grad_bias`` (dtype of the parameters) are summed over calls as
        torch's ``.grad``; reset them with :meth:`zero_grad`.  Two calls after one forward
        accumulate twice.  Nothing is accumulated for a parameter that is None.
        """
        if self._saved is None:
            raise RuntimeError("backward called before forward")
        need_p = self.weight is not None
        need_b = self.bias is not None
        nt = self.num_threads
        dres = None
        act = self._saved[-1]
        smooth = act[0] is not None and not v.from_output(act[0], act[2])
        if self._saved[0] == "train":
            _, x, mean, invstd, y, residual, masked, _ = self._saved
            if x.size == 0:  # empty batch: the saved statistics are NaN; torch gives zeros
                mean = invstd = np.zeros(self.num_features, _F64)
            kw = dict(activation=act[0], negative_slope=act[2] if act[0] == "leaky_relu" else
                      None, residual=residual, y=y, bias=self.bias if smooth else None,
                      **{k: a for k, a in (masked or {}).items()
                         if k in ("mask", "sample_weight", "masked_output")})
            r = batch_norm_backward(dy, x, mean, invstd, self.weight, axis=self.axis, out=out,
                                    num_threads=nt, needs=(True, need_p, need_b), **kw)
            dx, dw, db = r[:3]
            if residual is not None:
                dres = r[3]
        else:
            _, x, shape, dtype, y, residual, masked, _ = self._saved
            dy = v.kernel_dtype(dy, "dy")
            v.check_like(dy, shape, dtype, "dy")
            if x is None and (need_p or need_b or smooth):
                raise RuntimeError(
                    "the forward input was overwritten (out=x), so the parameter gradients "
                    "(and a smooth activation's) cannot be computed; use a separate out array")
            C = self.num_features
            rv = np.asarray(self.running_var, _F64)  # eval mode with running statistics
            scale = _k.inference_scale(None if self.weight is None else
                                       self.weight.astype(_F64), rv, self.eps)
            invstd = 1.0 / np.sqrt(rv + self.eps)
            user_dy = dy
            dy = self._gradient_at_activation(dy, x, y, residual, scale, act)
            padding = None if masked is None else masked.get("padding")
            keep = None
            if padding is not None:  # "zero" / "keep": the padding's output did not depend on x
                dy = np.where(padding, 0, dy).astype(dtype, copy=False)
                if x is not None:  # nor may a NaN there reach the sums
                    x = np.where(padding, 0, x).astype(dtype, copy=False)
                if masked["masked_output"] == "keep":
                    keep = user_dy if out is None or not np.may_share_memory(out, user_dy) \
                        else np.array(user_dy, copy=True)
            dres = dy if residual is not None else None
            # dx may overwrite the activation's gradient, our own temporary: one full-size
            # array besides the outputs at most
            if out is None and residual is None and dy is not user_dy:
                out = dy
            dw = db = None
            if need_p or need_b:
                _, dw, db = batch_norm_backward(dy, x, self.running_mean, invstd, self.weight,
                                                axis=self.axis, num_threads=nt,
                                                needs=(False, need_p, need_b))
            zero = np.zeros(C, _F64)
            scale = invstd if self.weight is None else invstd * self.weight
            dx = _apply_affine(dy, zero, np.ascontiguousarray(scale, _F64), zero, self.axis,
                               out, v.check_threads(nt), "dy")
            if keep is not None:
                np.copyto(dx, keep, where=padding)
        gw, gb = self.grad_weight, self.grad_bias
        if need_p:
            dw = dw.astype(self.dtype, copy=False)
            gw = dw.copy() if gw is None else gw + dw
        if need_b:
            db = db.astype(self.dtype, copy=False)
            gb = db.copy() if gb is None else gb + db
        # both gradients in one C call (dict.update; not the validating __setattr__, whose
        # Python frames Ctrl-C could stop between them): both accumulated or neither
        self.__dict__.update(grad_weight=gw, grad_bias=gb)
        hidden = None if self._saved[-2] is None else self._saved[-2].get("hidden")
        dx = M.masked_like(dx, hidden)
        return dx if dres is None else ResidualGradients(dx, dres)

    def _gradient_at_activation(self, dy: Any, x: Optional[np.ndarray],
                                y: Optional[np.ndarray], residual: Any,
                                scale: np.ndarray, act: tuple) -> np.ndarray:
        """Evaluation mode: ``dy * act'(z)``, the gradient at the activation's input ``z`` of
        the last forward (dy itself without an activation); act: its (name, code, slope)."""
        nt = v.check_threads(self.num_threads)
        C = self.num_features
        zero = np.zeros(C, _F64)
        name, code, slope = act
        if name is None:
            return dy if residual is None else np.array(dy, copy=True)
        if v.from_output(name, slope):
            return _apply_affine(y, zero, np.ones(C), zero, self.axis, None, nt, "y",
                                 post=(code, slope, None, dy))
        shift = zero if self.bias is None else self.bias.astype(_F64)
        return _apply_affine(x, np.asarray(self.running_mean, _F64), scale, shift, self.axis,
                             None, nt, post=(code, slope, residual, dy))

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        """The layer's state without the last forward's saved arrays (a pickled layer would
        carry its last batch: 49 MiB after one (32, 64, 56, 56) forward); :meth:`backward`
        after unpickling needs a new forward."""
        state = self.__dict__.copy()
        state["_saved"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ state dict
    def _state_keys(self) -> list:
        keys = []
        if self.weight is not None:
            keys.append("weight")
        if self.bias is not None:
            keys.append("bias")
        if self.track_running_stats:
            keys += ["running_mean", "running_var", "num_batches_tracked"]
        return keys

    def state_dict(self, convention: Optional[str] = None) -> dict:
        """The parameters and buffers under a framework's names, as NumPy copies.

        Parameters
        ----------
        convention : {None, "torch", "keras", "onnx", "flax"}, default None
            Whose names: None and ``"torch"`` give torch's (whatever the layer's own
            convention: the names torch's and cbn's ``load_state_dict`` take); ``"keras"``
            ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``; ``"onnx"`` ``scale``,
            ``B``, ``input_mean``, ``input_var`` (the BatchNormalization node's inputs);
            ``"flax"`` ``scale``, ``bias``, ``mean``, ``var``.  Only torch has a
            ``num_batches_tracked``.

        Returns
        -------
        dict of str to ndarray
            ``weight``, ``bias`` (when ``affine``), ``running_mean``, ``running_var`` and
            ``num_batches_tracked`` (int64, shape (); when ``track_running_stats``), in torch's
            order, under the convention's names.
            ``torch.nn.BatchNorm2d.load_state_dict({k: torch.from_numpy(v) ...})`` accepts the
            torch form.

        Raises
        ------
        ValueError
            On an unknown ``convention``.
        """
        names = conv.NAMES[conv.check_convention("torch" if convention is None else convention)]
        return {names[k]: getattr(self, k).copy() for k in self._state_keys() if k in names}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        convention: Optional[str] = None) -> IncompatibleKeys:
        """Copy parameters and buffers from ``state_dict`` into the layer's arrays.

        A torch ``state_dict`` converted with ``{k: v.numpy() for k, v in sd.items()}`` (or
        holding CPU tensors) loads directly, and so do Keras's, ONNX's and flax's names (flax's
        ``{"params": ..., "batch_stats": ...}`` too).  Values are cast into the existing
        arrays' dtype; nothing is changed unless every check passes.

        Parameters
        ----------
        state_dict : mapping of str to array_like
            Keys as returned by :meth:`state_dict` for one convention.  A missing
            ``num_batches_tracked`` is accepted and leaves the counter unchanged, as torch does
            for state dicts without version metadata.
        strict : bool, default True
            Raise on missing or unexpected keys; when False they are skipped and reported.
        convention : {None, "torch", "keras", "onnx", "flax"}, default None
            Whose names the keys are; None detects it from the keys (the convention naming most
            of them; an error names the keys when several conventions name as many).

        Returns
        -------
        IncompatibleKeys
            ``(missing_keys, unexpected_keys)``, in the convention's names.

        Raises
        ------
        KeyError
            With ``strict``, on missing or unexpected keys (all are named).
        ValueError
            If a value has the wrong shape (also when not ``strict``), or the convention cannot
            be told from the keys.
        TypeError
            If a value cannot be cast to the layer's dtype (e.g. a float counter).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        own = self._state_keys()
        state = conv.flatten(state_dict)
        if convention is None:
            convention = conv.detect(state)
        names = conv.NAMES[conv.check_convention(convention)]
        theirs = [names[k] for k in own if k in names]
        missing = [names[k] for k in own
                   if k in names and names[k] not in state and k != "num_batches_tracked"]
        unexpected = [k for k in state if k not in theirs]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append("missing key(s): " + ", ".join(map(repr, missing)))
            if unexpected:
                parts.append("unexpected key(s): " + ", ".join(map(repr, unexpected)))
            raise KeyError(f"Error(s) in loading state_dict for {type(self).__name__}: "
                           + "; ".join(parts)
                           + f" (this layer has keys {theirs}, convention {convention!r})")
        staged = []
        for k in own:
            if k not in names or names[k] not in state:
                continue
            dst = getattr(self, k)
            val = state[names[k]]
            if hasattr(val, "detach") and hasattr(val, "cpu"):  # a torch tensor
                val = val.detach().cpu().numpy()
            src = np.asarray(val)
            if src.shape != dst.shape:
                raise ValueError(f"size mismatch for {names[k]!r}: expected shape {dst.shape}, "
                                 f"got {src.shape}")
            if not np.can_cast(src.dtype, dst.dtype, "same_kind"):
                raise TypeError(f"cannot load {names[k]!r} of dtype {src.dtype} into "
                                f"{dst.dtype}")
            staged.append((dst, src))
        for dst, src in staged:
            np.copyto(dst, src, casting="same_kind")
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_keras(cls, weights: Sequence[ArrayLike], *, epsilon: float = 1e-3,
                   momentum: float = 0.99, axis: int = -1, center: bool = True,
                   scale: bool = True, dtype: Optional[DTypeLike] = None) -> "BatchNorm":
        """A layer from Keras ``BatchNormalization.get_weights()``.

        Parameters
        ----------
        weights : sequence of array_like of shape (C,)
            ``[gamma, beta, moving_mean, moving_variance]`` with ``gamma`` left out when
            ``scale=False`` and ``beta`` left out when ``center=False``.
        epsilon : float, default 1e-3
            The Keras layer's ``epsilon``.
        momentum : float, default 0.99
            The Keras layer's ``momentum`` (weight of the old moving value).
        axis : int, default -1
            The Keras layer's ``axis`` (channels-last by default).
        center, scale : bool, default True
            The Keras layer's ``center`` (beta) and ``scale`` (gamma) flags.
        dtype : dtype, optional
            Dtype of the layer; default that of ``moving_mean`` when it is float32/float64,
            else float32.

        Returns
        -------
        BatchNorm
            With ``convention="keras"``, in training mode like every new layer (call
            :meth:`eval` for inference).  ``center=False`` gives ``bias=None``
            (``bias=False``); ``scale=False`` with ``center=True`` gives a ``weight`` fixed at
            1 (its gradient is still accumulated: ignore it); both False give
            ``affine=False``.

        Raises
        ------
        ValueError
            If the number or shapes of the arrays do not match the flags.
        """
        weights = list(weights)
        expected = int(bool(scale)) + int(bool(center)) + 2
        if len(weights) != expected:
            names = (["gamma"] if scale else []) + (["beta"] if center else []) + [
                "moving_mean", "moving_variance"]
            raise ValueError(
                f"expected {expected} arrays ({', '.join(names)}) for center={center}, "
                f"scale={scale}, got {len(weights)}")
        arrs = [np.asarray(w) for w in weights]
        mm = arrs[-2]
        if mm.ndim != 1:
            raise ValueError(f"moving_mean must have shape (C,), got {mm.shape}")
        if dtype is None:
            dtype = mm.dtype if mm.dtype in (v.F32, v.F64) else np.float32
        layer = cls(mm.shape[0], eps=epsilon, momentum=momentum,
                    affine=bool(center or scale), bias=bool(center), axis=axis, dtype=dtype,
                    convention="keras")
        sd: dict = {"running_mean": arrs[-2], "running_var": arrs[-1]}
        i = 0
        if scale:
            sd["weight"] = arrs[i]
            i += 1
        if center:
            sd["bias"] = arrs[i]
        layer.load_state_dict(sd, strict=False)
        layer._keras_scale = bool(scale)
        return layer

    def to_keras(self) -> list:
        """Keras ``BatchNormalization.set_weights()``'s list: the inverse of :meth:`from_keras`.

        Returns
        -------
        list of ndarray
            ``[gamma, beta, moving_mean, moving_variance]`` (copies), ``gamma`` left out
            without ``weight`` or for a layer :meth:`from_keras` made with ``scale=False``
            (whose weight is fixed at 1), ``beta`` without ``bias`` (Keras's ``center=False``).
            The variance is the running one as kept: a torch-convention layer's, updated with
            the unbiased batch variance, serves Keras's inference as it is.

        Raises
        ------
        ValueError
            If the layer has no running statistics (Keras's layer always has them).
        """
        if not self.track_running_stats:
            raise ValueError("a layer without running statistics has no Keras weights")
        out = [self.weight.copy()] if self.weight is not None and getattr(
            self, "_keras_scale", True) else []
        if self.bias is not None:
            out.append(self.bias.copy())
        return out + [self.running_mean.copy(), self.running_var.copy()]

    @classmethod
    def from_onnx(cls, model: Any, node: Optional[str] = None, *,
                  dtype: Optional[DTypeLike] = None,
                  num_threads: Optional[int] = None) -> "BatchNorm":
        """A layer from a ``BatchNormalization`` node of an ONNX model.

        Parameters
        ----------
        model : onnx.ModelProto or path-like
            The model (``onnx`` must be installed: ``pip install onnx``).
        node : str, optional
            The node's name; None takes the model's only BatchNormalization node.
        dtype : dtype, optional
            Dtype of the layer; default that of the node's ``input_mean`` when it is
            float32/float64, else float32.
        num_threads : int, optional
            OpenMP threads for the kernels.

        Returns
        -------
        BatchNorm
            With ``convention="onnx"``, channel axis 1, ``scale``, ``B``, ``input_mean`` and
            ``input_var`` loaded, and ``eps`` and ``momentum`` the float32 values the model
            stores (ONNX's defaults 1e-5 and 0.9 when absent).  In the node's mode: evaluation
            for ``training_mode=0`` (the default: inference with the stored statistics, as
            ONNX Runtime runs it), training for ``training_mode=1``.

        Raises
        ------
        ImportError
            Without ``onnx``.
        ValueError
            If the model has no such node (or several, and ``node`` is None), or the node's
            parameters are not constants of the model.
        """
        from ._onnx import read_node

        p = read_node(model, node)
        mm = p["input_mean"]
        if dtype is None:
            dtype = mm.dtype if mm.dtype in (v.F32, v.F64) else np.float32
        layer = cls(mm.shape[0], eps=p["epsilon"], momentum=p["momentum"], axis=1,
                    dtype=dtype, convention="onnx", num_threads=num_threads)
        layer.load_state_dict({k: p[k] for k in ("scale", "B", "input_mean", "input_var")},
                              convention="onnx")
        return layer.train(p["training"])

    def freeze(self) -> FrozenBatchNorm:
        """A :class:`FrozenBatchNorm` computing this layer's evaluation-mode transform.

        Returns
        -------
        FrozenBatchNorm
            A snapshot: later training of this layer does not change it.

        Raises
        ------
        ValueError
            If the layer has no running statistics.
        """
        return FrozenBatchNorm.from_layer(self)

    def __repr__(self) -> str:
        s = (f"{type(self).__name__}({self.num_features}, eps={self.eps}, "
             f"momentum={self.momentum}, affine={self.affine}, bias={self.bias is not None}, "
             f"track_running_stats={self.track_running_stats}")
        if self.axis != 1:
            s += f", axis={self.axis}"
        if self.dtype != v.F32:
            s += f", dtype={self.dtype.name}"
        if self.convention != "torch":
            s += f", convention={self.convention!r}"
        if self.activation is not None:
            s += f", activation={self.activation!r}"
        if self.activation == "leaky_relu" and self.negative_slope != 0.01:
            s += f", negative_slope={self.negative_slope!r}"
        return s + ")"
