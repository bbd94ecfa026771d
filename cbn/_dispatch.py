"""Bind the kernels of one SIMD level, once, at import: the only place that binds a level.

The package is built with up to three copies of the same kernels: ``baseline`` (any CPU of the
target), ``avx2`` (x86-64-v3) and ``avx512`` (x86-64-v4), each a module holding only the nogil
kernels and their table.  Everything else is compiled once, in ``cbn._core`` (:data:`kernels`,
what the Python layer calls), which runs the kernels of the level bound here.  The best level
the CPU supports is bound; the environment variable ``CBN_SIMD`` (``baseline``, ``avx2`` or
``avx512``) caps it, e.g. to compare levels or to work around a CPU problem.  Asking for a level
the CPU or the build lacks falls back to the best available level below it, with a warning.
The benchmark's floor kernels always run at the best level (they measure the machine).

Tests and benchmarks run any other level with :func:`use_level` (or :func:`bind`).

``CBN_STREAMING_MIN_BYTES`` sets the size (bytes of all arrays of an element-wise pass) from
which outputs are written with streaming stores (default: the last-level cache size); ``off``
disables them, e.g. when the next layer reads the output while it is still in cache.
"""

import contextlib
import importlib
import os
import warnings

from . import _build_info, _core

#: From the most to the least capable.
LEVELS = ("avx512", "avx2", "baseline")

#: The compile-once module that the Python layer calls (it runs the bound level's kernels).
kernels = _core


def supported_levels():
    """The levels that are built and that this CPU supports, most capable first.

    Returns
    -------
    list of str
    """
    return [v for v in LEVELS if v in _build_info.VARIANTS and _core.cpu_supports(v)]


def best_supported():
    """The most capable level built and supported by this CPU, whatever ``CBN_SIMD`` says (the
    level of the benchmark's floor kernels).

    Returns
    -------
    str
    """
    levels = supported_levels()
    return levels[0] if levels else "baseline"


_tables = {}


def _table(name):
    """The kernel table of level ``name`` (its module imported once, attached to the runtime)."""
    if name not in _tables:
        module = importlib.import_module(f"cbn._kernels_{name}")
        _tables[name] = module.table(_core.runtime())
    return _tables[name]


def bind(name):
    """Run every kernel call of cbn at SIMD level ``name`` from now on.

    Parameters
    ----------
    name : str
        One of :func:`supported_levels`.

    Returns
    -------
    str
        The level bound before.

    Raises
    ------
    ValueError
        If ``name`` is not built or not supported by this CPU.

    Notes
    -----
    Not thread-safe against kernel calls running at the same time: for tests, benchmarks and
    start-up.
    """
    global level
    if name not in supported_levels():
        raise ValueError(f"SIMD level {name!r} is not built or not supported by this CPU; "
                         f"available: {', '.join(supported_levels())}")
    previous = level
    _core.bind(_table(name))
    level = name
    return previous


@contextlib.contextmanager
def use_level(name):
    """Context manager: cbn runs at SIMD level ``name`` inside the block (see :func:`bind`)."""
    previous = bind(name)
    try:
        yield name
    finally:
        bind(previous)


def _requested():
    """The level to bind: the best supported one, capped by ``CBN_SIMD``."""
    candidates = supported_levels()
    requested = os.environ.get("CBN_SIMD", "").strip().lower()
    if requested:
        if requested not in LEVELS:
            raise ValueError(
                f"CBN_SIMD={requested!r} is not a SIMD level; expected one of {', '.join(LEVELS)}"
            )
        allowed = LEVELS[LEVELS.index(requested):]
        candidates = [v for v in candidates if v in allowed]
    name = candidates[0] if candidates else "baseline"
    if requested and name != requested:
        warnings.warn(
            f"CBN_SIMD={requested!r}: not available on this CPU or build; using {name!r}",
            RuntimeWarning,
            stacklevel=3,
        )
    return name


def _configure_streaming():
    """Apply ``CBN_STREAMING_MIN_BYTES`` (a byte count, or ``off``) to the runtime."""
    text = os.environ.get("CBN_STREAMING_MIN_BYTES", "").strip().lower()
    if not text:
        return
    if text in ("off", "never", "none"):
        _core.set_nontemporal_min_bytes(1 << 62)
        return
    try:
        value = int(text)
        if not 0 <= value < 1 << 62:  # a byte count the runtime's ssize_t holds
            raise ValueError
    except ValueError:
        raise ValueError(
            f"CBN_STREAMING_MIN_BYTES={text!r} is not a byte count in [0, 2**62) or 'off'"
        ) from None
    _core.set_nontemporal_min_bytes(value)


level = _requested()
_core.bind(_table(level), floor=_table(best_supported()))
_configure_streaming()
