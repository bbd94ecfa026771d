"""The bandwidth floor: streaming OpenMP kernels that move the bytes of an op with no arithmetic
to speak of, the best any batch-norm kernel can do on this machine."""

import numpy as np


def floor_kernels():
    """The module with the floor kernels, and the SIMD level they run at.

    ``cbn._core`` binds its floor kernels to the most capable level the CPU runs, not the one
    ``CBN_SIMD`` selects for cbn: the floor is the machine's bandwidth, the same whichever level
    is being measured.  Every use of the floor kernels goes through here.

    Returns
    -------
    (module, str)
    """
    from .._dispatch import kernels

    return kernels, kernels.floor_variant()


def _as_streamable(a):
    """A flat float32/float64 view of ``a``'s bytes: a 16-bit case's arrays are streamed as
    float32 (the floor moves bytes; an odd last element is left out)."""
    flat = a.reshape(-1)
    if flat.dtype.itemsize == 2:
        flat = flat[: flat.size // 2 * 2].view(np.float32)
    return flat


def floor_call(op, d, scratch, nt):
    """The streaming-kernel callable that moves the bytes of ``op`` (kernels from
    :func:`floor_kernels`)."""
    k, _ = floor_kernels()

    x, dy, r, out = (_as_streamable(a) for a in (d.x, d.dy, d.residual, scratch))
    if op in ("inference", "frozen", "inference_silu"):  # read x, write y
        return lambda: k.stream_scale(x, out, nt)
    if op in ("forward", "forward_masked", "forward_weighted"):  # read x; read x, write y
        return lambda: (k.stream_sum(x, nt), k.stream_scale(x, out, nt))
    if op == "inference_add_relu":  # read x and the residual, write y
        return lambda: k.stream_triad(x, r, out, nt)
    if op == "forward_add_relu":  # read x; read x and the residual, write y
        return lambda: (k.stream_sum(x, nt), k.stream_triad(x, r, out, nt))
    if op == "backward_add_relu":
        # read dy and y, write g (= dresidual); read g and x; read g and x, write dx
        g = np.empty_like(x)  # dresidual
        return lambda: (k.stream_triad(dy, x, g, nt), k.stream_sum(g, nt), k.stream_sum(x, nt),
                        k.stream_triad(g, x, out, nt))
    return lambda: (k.stream_sum(x, nt), k.stream_sum(dy, nt), k.stream_triad(x, dy, out, nt))
