"""Choose the kernel module (SIMD variant) for this CPU, once, at import.

The package is built with up to three copies of the same kernels: ``baseline`` (any CPU of the
target), ``avx2`` (x86-64-v3) and ``avx512`` (x86-64-v4).  The best one the CPU supports is used;
the environment variable ``CBN_SIMD`` (``baseline``, ``avx2`` or ``avx512``) caps the level, e.g.
to compare variants or to work around a CPU problem.  Asking for a level the CPU or the build
lacks falls back to the best available level below it, with a warning.

``CBN_STREAMING_MIN_BYTES`` sets the size (bytes of all arrays of an element-wise pass) from
which outputs are written with streaming stores (default: the last-level cache size); ``off``
disables them, e.g. when the next layer reads the output while it is still in cache.
"""

import importlib
import os
import warnings

from . import _build_info

#: From the most to the least capable.
LEVELS = ("avx512", "avx2", "baseline")


def _first_supported(candidates):
    """The first of ``candidates`` (level names, most capable first) that this CPU supports,
    as (module, name); the baseline if none is."""
    baseline = importlib.import_module("cbn._kernels_baseline")
    for name in candidates:
        if baseline.cpu_supports(name):
            module = baseline if name == "baseline" else importlib.import_module(f"cbn._kernels_{name}")
            return module, name
    return baseline, "baseline"  # pragma: no cover - baseline always qualifies


def best_supported():
    """The most capable kernel module built and supported by this CPU, whatever ``CBN_SIMD``
    says (the benchmark's bandwidth floor measures the machine with it).

    Returns
    -------
    (module, str)
        The module and its level name.
    """
    return _first_supported([v for v in LEVELS if v in _build_info.VARIANTS])


def _select():
    candidates = [v for v in LEVELS if v in _build_info.VARIANTS]
    requested = os.environ.get("CBN_SIMD", "").strip().lower()
    if requested:
        if requested not in LEVELS:
            raise ValueError(
                f"CBN_SIMD={requested!r} is not a SIMD level; expected one of {', '.join(LEVELS)}"
            )
        allowed = LEVELS[LEVELS.index(requested):]
        candidates = [v for v in candidates if v in allowed]
    module, name = _first_supported(candidates)
    if requested and name != requested:
        warnings.warn(
            f"CBN_SIMD={requested!r}: not available on this CPU or build; using {name!r}",
            RuntimeWarning,
            stacklevel=3,
        )
    return module, name


def _configure_streaming(module):
    """Apply ``CBN_STREAMING_MIN_BYTES`` (a byte count, or ``off``) to the kernel module."""
    text = os.environ.get("CBN_STREAMING_MIN_BYTES", "").strip().lower()
    if not text:
        return
    if text in ("off", "never", "none"):
        module.set_nontemporal_min_bytes(1 << 62)
        return
    try:
        value = int(text)
        if value < 0:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"CBN_STREAMING_MIN_BYTES={text!r} is not a byte count >= 0 or 'off'"
        ) from None
    module.set_nontemporal_min_bytes(value)


kernels, level = _select()
_configure_streaming(kernels)
