"""The register-tiled channels-last kernels (src/cbn_tiles.h) at every width class.

Channel counts straddle the tile boundaries of every SIMD level (2/4/8 float64 lanes per
vector, element-wise tiles of 4 to 64 columns, 8/16/32-column reduction tiles) so that full
tiles, partial tiles and the row-loop remainders are all exercised, in place and with the fused
ReLU, against the float64 oracle (tests/kernels/test_variants.py runs every level)."""

import numpy as np
import pytest

import cbn
import cbn.reference as ref
from helpers import DTYPES, assert_elementwise_close, eps_of, make_case, stats_error

WIDTHS = [3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 40, 63, 64, 65, 100, 129, 520]


@pytest.mark.parametrize("C", WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
def test_channels_last_widths(rng, C, dtype, relu):
    rows = 150  # several sub-blocks plus a partial one
    x, dy, w, b = make_case(rng, (rows, C), -1, dtype, offset=3.0)
    act = "relu" if relu else None
    x64 = x.astype(np.float64)
    mean_ref = x64.mean(axis=0)
    var_ref = x64.var(axis=0)
    for nt in (1, 2):
        y, mean, invstd = cbn.batch_norm_forward(x, w, b, axis=-1, num_threads=nt,
                                                 activation=act)
        assert np.all(np.abs(mean - mean_ref) <= 64 * eps_of(np.float64) * np.abs(x64).max(axis=0))
        np.testing.assert_allclose(1.0 / invstd**2 - 1e-5, var_ref, rtol=1e-12)
        y_ref, _, _ = ref.batch_norm_forward(x64, w, b, axis=-1, activation=act)
        scale = np.abs(w) * invstd
        # the oracle's own float64 form x * scale + shift rounds at |x * scale| + |shift|
        oracle = 4 * eps_of(np.float64) * ((np.abs(x64) + np.abs(mean)) * scale + np.abs(b))
        assert_elementwise_close(y, y_ref, dtype, np.abs(x64 - mean) * scale + np.abs(b),
                                 stats_error=stats_error(x64, 1, w * invstd) + oracle)

        # inference in place: the tile reads each element before writing it
        rm, rv = mean_ref + 0.1, var_ref * 1.5
        x_in = x.copy()
        out = cbn.batch_norm_inference(x_in, rm, rv, w, b, axis=-1, out=x_in,
                                       num_threads=nt, activation=act)
        assert out is x_in
        y_ref = ref.batch_norm_inference(x64, rm, rv, w, b, axis=-1, activation=act)
        scale = np.abs(w) / np.sqrt(rv + 1e-5)
        oracle = 4 * eps_of(np.float64) * ((np.abs(x64) + np.abs(rm)) * scale + np.abs(b))
        assert_elementwise_close(out, y_ref, dtype, np.abs(x64 - rm) * scale + np.abs(b),
                                 stats_error=oracle)

        # backward, with the ReLU mask taken from the forward output
        ym = y if relu else None
        g = cbn.batch_norm_backward(dy, x, mean, invstd, w, axis=-1, num_threads=nt,
                                    activation=act, y=ym)
        g_ref = ref.batch_norm_backward(dy.astype(np.float64), x64, mean, invstd, w, axis=-1,
                                        activation=act, y=ym)
        gmag = (np.abs(dy.astype(np.float64)) + np.abs(x64 - mean) * invstd + 1.0) \
            * np.abs(w) * invstd
        assert_elementwise_close(g[0], g_ref[0], dtype, gmag, factor=64.0,
                                 stats_error=stats_error(dy.astype(np.float64), 1,
                                                         w * invstd))
        np.testing.assert_allclose(g[2], g_ref[2], rtol=1e-10, atol=1e-10 * rows)
        np.testing.assert_allclose(g[1], g_ref[1], rtol=1e-9, atol=1e-9 * rows)
