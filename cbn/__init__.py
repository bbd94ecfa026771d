"""cbn: batch normalization for NumPy arrays on the CPU.

Fast GIL-free OpenMP kernels for the training forward pass, the backward pass and inference,
for any channel axis, in float32 and float64, with the semantics of
``torch.nn.functional.batch_norm``.  ``cbn.reference`` holds the same functions in plain NumPy.
"""

__version__ = "0.1.0"


def _installed_copy():
    """The spec of an installed cbn other than this folder, or None.

    ``python -m cbn`` (or ``import cbn``) run in the repository root finds the uncompiled
    ``cbn/`` folder of the checkout before the installed package, because Python puts the
    current directory first on ``sys.path``.
    """
    import importlib.machinery
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec(__name__, path)
    if spec is None or spec.origin is None or spec.loader is None:
        return None
    if os.path.dirname(os.path.abspath(spec.origin)) == here:
        return None
    return spec


try:
    from ._dispatch import kernels as _kernels  # noqa: F401
except ImportError as exc:  # only in a source tree without a build
    _spec = _installed_copy()
    if _spec is None:
        raise ImportError(
            "cbn's compiled kernels could not be imported. If you are running from the source "
            "tree, install the package first (pip install .), or use an editable install "
            f"(pip install --no-build-isolation -e .). Cause: {exc}"
        ) from exc
    # Run the installed package in place of this copy: an import returns whatever
    # sys.modules holds once the module has run, ``python -m cbn`` then finds cbn.__main__
    # through the installed package's __path__, and the imports below resolve to the
    # installed submodules.
    import importlib.util as _util
    import sys as _sys

    _module = _util.module_from_spec(_spec)
    _sys.modules[__name__] = _module
    _spec.loader.exec_module(_module)

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
from ._types import BackwardResult, ForwardResult, FusedBackwardResult
from ._fold import ResidualGradients

__all__ = [
    "batch_norm",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_inference",
    "ForwardResult",
    "BackwardResult",
    "FusedBackwardResult",
    "ResidualGradients",
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


def __getattr__(name):
    """``cbn.dask`` without ``import cbn.dask`` (PEP 562): the submodule is imported on first
    access; without Dask installed that access is an ImportError saying how to get it."""
    if name == "dask":
        import importlib
        import importlib.util

        if importlib.util.find_spec("dask") is None:
            raise ImportError("cbn.dask needs Dask: pip install \"cbn[dask]\" (installs "
                              "dask[array] and distributed)")
        return importlib.import_module(".dask", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
