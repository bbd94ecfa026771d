"""Channel-major element-wise passes walking down in memory (cbn_reverse.h): chosen when the output
starts just past an input modulo 4 KB (4K aliasing), bit-identical to the forward passes."""

import numpy as np
import pytest

import cbn
from cbn._dispatch import kernels as K

from helpers import make_case


@pytest.fixture
def mode():
    """Set the direction mode for one test, then restore it."""
    old = K.set_reverse_mode(1)
    yield K.set_reverse_mode
    K.set_reverse_mode(old)


def _placed(x, offset_bytes, base):
    """An array shaped like x starting `offset_bytes` past `base` modulo 4096."""
    buf = np.empty(x.size + 4096 // x.itemsize + 16, x.dtype)
    start = ((base.ctypes.data + offset_bytes - buf.ctypes.data) % 4096) // x.itemsize
    out = buf[start:start + x.size].reshape(x.shape)
    assert (out.ctypes.data - base.ctypes.data) % 4096 == offset_bytes % 4096
    return out


CASES = [((4, 6, 37), 1), ((3, 5, 200), 1), ((2, 3, 7, 9), 1), ((57, 20), 1), ((6, 5, 5, 40), -1),
         ((300, 3), -1), ((9, 70), 1)]


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_reverse_equals_forward(rng, mode, shape, axis, dtype, relu, threads):
    x, dy, w, b = make_case(rng, shape, axis, dtype, offset=1.5)
    act = "relu" if relu else None
    C = x.shape[axis]
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
    results = {}
    for m in (0, 2):
        mode(m)
        K.last_reversed(reset=True)
        yi = cbn.batch_norm_inference(x, rm, rv, w, b, axis=axis, activation=act,
                                      out=_placed(x, 64, x), num_threads=threads)
        yf, mean, invstd = cbn.batch_norm_forward(x, w, b, axis=axis, activation=act,
                                                  out=_placed(x, 64, x), num_threads=threads)
        g = cbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis, activation=act,
                                    y=yf if relu else None, out=_placed(x, 64, x),
                                    num_threads=threads)
        inner = int(np.prod(x.shape[axis % x.ndim + 1:]))
        assert K.last_reversed(reset=True) == (m == 2 and inner > 1)  # channel-major only
        results[m] = [yi, yf, mean, invstd, *g]
    for a, b_ in zip(results[0], results[2]):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("offset,walks_down", [(16, True), (64, True), (256, True), (512, False),
                                               (2048, False), (4096 - 64, False), (0, False)])
@pytest.mark.parametrize("shape,axis", [((4, 8, 300), 1), ((400, 64), -1)])
def test_direction_follows_the_output_placement(rng, mode, offset, walks_down, shape, axis):
    walks_down = walks_down and axis == 1  # channels-last rows always walk up
    x, dy, w, b = make_case(rng, shape, axis, np.float32)
    C = x.shape[axis]
    rm, rv = np.zeros(C), np.ones(C)
    K.last_reversed(reset=True)
    out = _placed(x, offset, x) if offset else np.empty_like(x)
    if offset == 0 and (out.ctypes.data - x.ctypes.data) % 4096:
        out = _placed(x, 4096, x)
    cbn.batch_norm_inference(x, rm, rv, axis=axis, out=out)
    assert K.last_reversed(reset=True) == walks_down
    np.testing.assert_array_equal(out, cbn.batch_norm_inference(x, rm, rv, axis=axis))


def test_in_place_and_an_input_just_past_the_output_walk_up(rng, mode):
    x, dy, w, b = make_case(rng, (4, 8, 300), 1, np.float32)
    _, mean, invstd = cbn.batch_norm_forward(x)
    # dx 64 bytes past x but dy 64 bytes past dx: either direction aliases one input; stay up
    dx = _placed(x, 64, x)
    dy2 = _placed(dy, 64, dx)
    dy2[...] = dy
    K.last_reversed(reset=True)
    cbn.batch_norm_backward(dy2, x, mean, invstd, out=dx)
    assert not K.last_reversed(reset=True)
    xc = x.copy()
    cbn.batch_norm_inference(xc, np.zeros(8), np.ones(8), out=xc)
    assert not K.last_reversed(reset=True)


def test_mode_setter_rejects_unknown_modes():
    with pytest.raises(ValueError, match="mode"):
        K.set_reverse_mode(3)
