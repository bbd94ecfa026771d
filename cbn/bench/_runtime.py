"""The benchmark's access to cbn's dispatched kernel module (:data:`cbn._dispatch.kernels`):
one helper per query, so that re-pointing the kernel module is a one-line change."""


def _kernels():
    """The kernel module cbn dispatches to (the one ``CBN_SIMD`` selects)."""
    from .._dispatch import kernels

    return kernels


def kernel_tuning():
    """The kernels' tuning figures (``l3_bytes``, ``parallel_min_elems``, ...)."""
    return _kernels().tuning()


def max_threads():
    """The number of OpenMP threads the kernels would use by default."""
    return _kernels().max_threads()


def resolve_threads(num_threads):
    """The thread count to use: ``num_threads``, or all OpenMP threads when None.

    Parameters
    ----------
    num_threads : int or None
        Requested thread count.

    Returns
    -------
    int
    """
    if num_threads is not None:
        return int(num_threads)
    return max(1, max_threads())
