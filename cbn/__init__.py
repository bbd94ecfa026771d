"""cbn: batch normalization for NumPy arrays on the CPU.

Fast GIL-free OpenMP kernels for the training forward pass, the backward pass and inference,
for any channel axis, in float32 and float64, with the semantics of
``torch.nn.functional.batch_norm``.  ``cbn.reference`` holds the same functions in plain NumPy.
"""

__version__ = "0.1.0"

try:
    from ._dispatch import kernels as _kernels  # noqa: F401
except ImportError as exc:  # pragma: no cover - only in a source tree without a build
    raise ImportError(
        "cbn's compiled kernels could not be imported. If you are running from the source "
        "tree, install the package first (pip install .) and run from another directory, "
        f"or use an editable install (pip install --no-build-isolation -e .). Cause: {exc}"
    ) from exc

from . import reference
from ._batch_norm import (
    batch_norm,
    batch_norm_backward,
    batch_norm_forward,
    batch_norm_inference,
)
from ._config import config, show_config
from ._fold import FoldedAffine, FrozenBatchNorm, fold, fold_into_conv, fold_into_linear
from ._layer import BatchNorm, IncompatibleKeys
from ._moments import (
    BackwardSums,
    Moments,
    backward_elemt,
    backward_reduce,
    merge_moments,
    moments,
    normalize,
)
from ._types import BackwardResult, ForwardResult

__all__ = [
    "batch_norm",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_inference",
    "ForwardResult",
    "BackwardResult",
    "moments",
    "merge_moments",
    "normalize",
    "backward_reduce",
    "backward_elemt",
    "Moments",
    "BackwardSums",
    "reference",
    "show_config",
    "config",
    "__version__",
    "BatchNorm",
    "IncompatibleKeys",
    "FrozenBatchNorm",
    "FoldedAffine",
    "fold",
    "fold_into_conv",
    "fold_into_linear",
]
