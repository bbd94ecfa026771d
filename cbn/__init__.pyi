from typing import Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import reference as reference
from ._fold import (
    FoldedAffine as FoldedAffine,
    FrozenBatchNorm as FrozenBatchNorm,
    fold as fold,
    fold_into_conv as fold_into_conv,
    fold_into_linear as fold_into_linear,
)
from ._layer import BatchNorm as BatchNorm, IncompatibleKeys as IncompatibleKeys
from ._moments import (
    BackwardSums as BackwardSums,
    Moments as Moments,
    backward_elemt as backward_elemt,
    backward_reduce as backward_reduce,
    merge_moments as merge_moments,
    moments as moments,
    normalize as normalize,
)
from ._types import BackwardResult as BackwardResult, ForwardResult as ForwardResult

__version__: str

_Array = npt.NDArray[np.floating]
_Vector = Optional[npt.ArrayLike]

def batch_norm(
    x: npt.ArrayLike,
    running_mean: Optional[_Array] = ...,
    running_var: Optional[_Array] = ...,
    weight: _Vector = ...,
    bias: _Vector = ...,
    training: bool = ...,
    momentum: float = ...,
    eps: float = ...,
    *,
    axis: int = ...,
    out: Optional[_Array] = ...,
    num_threads: Optional[int] = ...,
    skip_nonfinite: bool = ...,
    activation: Optional[str] = ...,
) -> _Array: ...
def batch_norm_forward(
    x: npt.ArrayLike,
    weight: _Vector = ...,
    bias: _Vector = ...,
    *,
    eps: float = ...,
    running_mean: Optional[_Array] = ...,
    running_var: Optional[_Array] = ...,
    momentum: float = ...,
    axis: int = ...,
    out: Optional[_Array] = ...,
    num_threads: Optional[int] = ...,
    skip_nonfinite: bool = ...,
    activation: Optional[str] = ...,
) -> ForwardResult: ...
def batch_norm_backward(
    dy: npt.ArrayLike,
    x: npt.ArrayLike,
    mean: npt.ArrayLike,
    invstd: npt.ArrayLike,
    weight: _Vector = ...,
    *,
    axis: int = ...,
    out: Optional[_Array] = ...,
    num_threads: Optional[int] = ...,
    needs: Tuple[bool, bool, bool] = ...,
    activation: Optional[str] = ...,
    y: Optional[_Array] = ...,
) -> BackwardResult: ...
def batch_norm_inference(
    x: npt.ArrayLike,
    running_mean: npt.ArrayLike,
    running_var: npt.ArrayLike,
    weight: _Vector = ...,
    bias: _Vector = ...,
    *,
    eps: float = ...,
    axis: int = ...,
    out: Optional[_Array] = ...,
    num_threads: Optional[int] = ...,
    activation: Optional[str] = ...,
) -> _Array: ...
def config() -> dict: ...
def show_config(file: Optional[object] = ...) -> None: ...
