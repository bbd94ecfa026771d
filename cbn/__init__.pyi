from typing import Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

from . import dask as dask
from . import reference as reference
from ._fold import (
    FoldedAffine as FoldedAffine,
    FrozenBatchNorm as FrozenBatchNorm,
    ResidualGradients as ResidualGradients,
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
from ._types import (
    BackwardResult as BackwardResult,
    ForwardResult as ForwardResult,
    FusedBackwardResult as FusedBackwardResult,
)

__version__: str

_Array = npt.NDArray[np.floating]
_Vector = Optional[npt.ArrayLike]
_Activation = Optional[
    Literal["relu", "relu6", "leaky_relu", "silu", "gelu", "gelu_tanh"]
]
_MaskedOutput = Literal["normalize", "zero", "keep"]

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
    activation: _Activation = ...,
    residual: Optional[npt.ArrayLike] = ...,
    negative_slope: Optional[float] = ...,
    convention: Literal["torch", "keras", "onnx", "flax"] = ...,
    mask: Optional[npt.ArrayLike] = ...,
    sample_weight: Optional[npt.ArrayLike] = ...,
    masked_output: _MaskedOutput = ...,
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
    activation: _Activation = ...,
    residual: Optional[npt.ArrayLike] = ...,
    negative_slope: Optional[float] = ...,
    convention: Literal["torch", "keras", "onnx", "flax"] = ...,
    mask: Optional[npt.ArrayLike] = ...,
    sample_weight: Optional[npt.ArrayLike] = ...,
    masked_output: _MaskedOutput = ...,
) -> ForwardResult: ...
@overload
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
    needs: Union[Tuple[bool, bool, bool], Tuple[bool, bool, bool, bool]] = ...,
    activation: _Activation = ...,
    y: Optional[_Array] = ...,
    bias: _Vector = ...,
    residual: None = ...,
    negative_slope: Optional[float] = ...,
    dresidual_out: None = ...,
    mask: Optional[npt.ArrayLike] = ...,
    sample_weight: Optional[npt.ArrayLike] = ...,
    masked_output: _MaskedOutput = ...,
) -> BackwardResult: ...
@overload
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
    needs: Union[Tuple[bool, bool, bool], Tuple[bool, bool, bool, bool]] = ...,
    activation: _Activation = ...,
    y: Optional[_Array] = ...,
    bias: _Vector = ...,
    residual: npt.ArrayLike,
    negative_slope: Optional[float] = ...,
    dresidual_out: Optional[_Array] = ...,
    mask: Optional[npt.ArrayLike] = ...,
    sample_weight: Optional[npt.ArrayLike] = ...,
    masked_output: _MaskedOutput = ...,
) -> FusedBackwardResult: ...
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
    activation: _Activation = ...,
    residual: Optional[npt.ArrayLike] = ...,
    negative_slope: Optional[float] = ...,
) -> _Array: ...
def config() -> dict: ...
def show_config(file: Optional[object] = ...) -> None: ...
