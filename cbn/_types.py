"""Result types shared by the kernels' API and the NumPy reference."""

from typing import NamedTuple, Optional

import numpy as np


class ForwardResult(NamedTuple):
    """Training forward output.

    Attributes
    ----------
    out : ndarray
        The normalized array, same shape and dtype as ``x``.
    mean : ndarray of float64, shape (C,)
        The batch mean per channel.
    invstd : ndarray of float64, shape (C,)
        ``1 / sqrt(var + eps)`` with the biased batch variance.
    """

    out: np.ndarray
    mean: np.ndarray
    invstd: np.ndarray


class BackwardResult(NamedTuple):
    """Backward output; a gradient not requested through ``needs`` is ``None``.

    Attributes
    ----------
    dx : ndarray or None
        Gradient with respect to ``x``, same shape and dtype as ``x``.
    dweight : ndarray or None, shape (C,)
        Gradient with respect to ``weight`` (gamma).
    dbias : ndarray or None, shape (C,)
        Gradient with respect to ``bias`` (beta).
    """

    dx: Optional[np.ndarray]
    dweight: Optional[np.ndarray]
    dbias: Optional[np.ndarray]


class FusedBackwardResult(NamedTuple):
    """Backward output of an op with a residual (``y = act(bn(x) + residual)``); a gradient
    not requested through ``needs`` is ``None``.

    Attributes
    ----------
    dx : ndarray or None
        Gradient with respect to ``x``, same shape and dtype as ``x``.
    dweight : ndarray or None, shape (C,)
        Gradient with respect to ``weight`` (gamma).
    dbias : ndarray or None, shape (C,)
        Gradient with respect to ``bias`` (beta).
    dresidual : ndarray or None
        Gradient with respect to ``residual`` (the skip branch): ``dy * act'(bn(x) +
        residual)``, same shape and dtype as ``x``.
    """

    dx: Optional[np.ndarray]
    dweight: Optional[np.ndarray]
    dbias: Optional[np.ndarray]
    dresidual: Optional[np.ndarray]
