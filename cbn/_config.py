"""Build and runtime configuration report (``cbn.show_config()``, ``python -m cbn info``)."""

import platform
import sys

import numpy as np

from . import _build_info, _dispatch


def _openmp_runtime():
    """Name of the OpenMP runtime loaded in this process, read from the process map."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        maps = ""
    for lib, name in (("libgomp", "GNU libgomp"), ("libiomp", "Intel libiomp"),
                      ("libomp", "LLVM libomp")):
        if lib in maps:
            return name
    return "unknown" if _build_info.OPENMP else "none"


def config():
    """The configuration as a dict (what :func:`show_config` prints).

    Returns
    -------
    dict
        Keys: ``version``, ``simd_level``, ``simd_variants_built``, ``openmp``,
        ``openmp_version``, ``openmp_runtime``, ``default_threads``, ``compiler``,
        ``c_args``, ``buildtype``, ``cython``, ``tuning``, ``python``, ``numpy``, ``machine``.
    """
    from . import __version__

    k = _dispatch.kernels
    enabled, omp_version, max_threads = k.openmp_info()
    return {
        "version": __version__,
        "simd_level": _dispatch.level,
        "simd_variants_built": list(_build_info.VARIANTS),
        "openmp": enabled,
        "openmp_version": omp_version,
        "openmp_runtime": _openmp_runtime() if enabled else "none",
        "default_threads": max_threads,
        "compiler": _build_info.COMPILER,
        "c_args": _build_info.C_ARGS,
        "buildtype": _build_info.BUILDTYPE,
        "cython": _build_info.CYTHON,
        "tuning": k.tuning(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "machine": platform.machine(),
    }


_VARIANT_FLAGS = {"baseline": "target default (x86-64: SSE2)", "avx2": "-march=x86-64-v3",
                  "avx512": "-march=x86-64-v4 -mprefer-vector-width=512"}


def show_config(file=None):
    """Print how cbn was built and what it uses at run time.

    Shows the version, whether OpenMP is on and which runtime is loaded, the default thread
    count (``omp_get_max_threads()``, so ``OMP_NUM_THREADS`` applies), the compiler and flags,
    and the SIMD level chosen for this CPU (``CBN_SIMD`` caps it).

    Parameters
    ----------
    file : file-like, optional
        Where to print; default ``sys.stdout``.
    """
    c = config()
    lines = [
        f"cbn {c['version']}",
        f"  simd level      : {c['simd_level']}  ({_VARIANT_FLAGS.get(c['simd_level'], '')})",
        f"  variants built  : {', '.join(c['simd_variants_built'])}",
        f"  openmp          : {'on' if c['openmp'] else 'OFF (serial build)'}"
        + (f"  (_OPENMP={c['openmp_version']}, runtime {c['openmp_runtime']})" if c["openmp"] else ""),
        f"  default threads : {c['default_threads']}",
        f"  compiler        : {c['compiler']}  ({c['buildtype']}, Cython {c['cython']})",
        f"  kernel c_args   : {c['c_args']}",
        f"  tuning          : {c['tuning']}",
        f"  python / numpy  : {c['python']} / {c['numpy']} on {c['machine']}",
    ]
    print("\n".join(lines), file=file or sys.stdout)
