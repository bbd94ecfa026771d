# Included by _kernels.pyx (compiled per SIMD level; declarations and the fused type there).
# Wide channels: float32 channels whose coefficients do not fit the float32 element-wise
# passes, computed in float64 instead.
#
# The passes evaluate y = (x - hi) * scale + shift' and dx = g * k1 + (x - hi) * k2 + k3' in
# the data's type.  For float32 that is exact to rounding unless a coefficient itself leaves
# float32: a legal tiny eps on a constant or subnormal-valued channel gives invstd ~1e40 (then
# 0 * inf = NaN where the answer is 0), and a centre of magnitude >= 2^103 lets x - hi
# overflow (data spanning +-3.4e38).  Below 2^103 it cannot: |x| <= FLT_MAX, and a
# difference within half an ulp of FLT_MAX (2^103) of it rounds back to a finite value.  A
# channel is *wide* when
#
#   * its centre is finite and |hi| >= 2^103, or
#   * a multiplying coefficient (scale; k1, k2) is finite in float64 but not in float32, or
#     nonzero and below float32's normal range (a subnormal scale keeps few digits), or
#   * its additive coefficient (shift', k3') is finite and above FLT_MAX * 2^-21,
#
# and a channel with NaN or Inf statistics is never wide (its NaN propagates either way).  The
# last condition bounds what rounding the products can cost without an FMA: where a product
# overflows although the exact result is finite, |exact| >= FLT_MAX (1 - 2^-21), so the
# float32 passes return Inf only for results within 2^-21 of FLT_MAX or beyond.
#
# A wide channel gets zero coefficients in the float32 pass (its output there is a finite
# dummy) and its elements are computed here in float64 from the unsplit coefficients, through
# the same epilogue or post-operation as the pass: before the pass, into a packed buffer, then
# copied into place after it (the pass may be in place, so x must be read first), or directly
# in a per-channel task (each element is read, then written, at one index).  Wide channels
# cost the others nothing: one test per channel while the coefficients are computed.


cdef double _F32_MAX = 3.4028234663852886e38
cdef double _WIDE_CENTRE = 10141204801825835211973625643008.0  # 2^103
cdef double _WIDE_ADD = 3.4028234663852886e38 / 2097152.0      # FLT_MAX * 2^-21


cdef struct Wide:
    Py_ssize_t n        # wide channels found
    Py_ssize_t* chan    # their indices, in channel order
    double* k           # 4 float64 coefficients each: (centre, scale, shift, 0) or
                        # (mean, k1, k2, k3)
    void* packed        # their outputs, channel after channel (of the data's type), or NULL


cdef inline void _wide_init(Wide* wd) noexcept nogil:
    wd.n = 0
    wd.chan = NULL
    wd.k = NULL
    wd.packed = NULL


cdef inline void _wide_free(Wide* wd) noexcept nogil:
    free(wd.chan)
    free(wd.k)
    free(wd.packed)
    _wide_init(wd)


cdef int _wide_add(Wide* wd, Py_ssize_t C, Py_ssize_t c, double k0, double k1, double k2,
                   double k3) noexcept nogil:
    """Record channel c with its coefficients (space for C channels on the first).  0/-1."""
    if wd.chan == NULL:
        wd.chan = <Py_ssize_t*>malloc(C * sizeof(Py_ssize_t))
        wd.k = <double*>malloc(4 * C * sizeof(double))
        if wd.chan == NULL or wd.k == NULL:
            _wide_free(wd)
            return -1
    wd.chan[wd.n] = c
    wd.k[4 * wd.n] = k0
    wd.k[4 * wd.n + 1] = k1
    wd.k[4 * wd.n + 2] = k2
    wd.k[4 * wd.n + 3] = k3
    wd.n += 1
    return 0


cdef double _F32_MIN = 1.1754943508222875e-38  # the smallest normal float32


cdef inline bint _leaves_f32(double v) noexcept nogil:
    """v is finite and nonzero but its float32 rounding overflows or is subnormal (digits lost:
    a scale of 1e-40 keeps ~16 bits)."""
    cdef double r = <double><float>v
    return isfinite(v) and (not isfinite(r) or (v != 0.0 and fabs(r) < _F32_MIN))


cdef inline bint _centre_wide(double centre, double hi) noexcept nogil:
    return isfinite(centre) and fabs(hi) >= _WIDE_CENTRE


cdef inline bint _addend_wide(double v) noexcept nogil:
    return isfinite(v) and fabs(v) > _WIDE_ADD


cdef inline bint _affine_wide(double centre, double hi, double scale,
                              double shift) noexcept nogil:
    """The forward/inference channel with these float64 coefficients (shift the split one) is
    wide (see the top of this file)."""
    return _centre_wide(centre, hi) or _leaves_f32(scale) or _addend_wide(shift)


cdef inline bint _dx_wide(double mean, double hi, double k1, double k2,
                          double k3) noexcept nogil:
    """The backward channel with these float64 coefficients (k3 the split one) is wide."""
    return _centre_wide(mean, hi) or _leaves_f32(k1) or _leaves_f32(k2) or _addend_wide(k3)


# ------------------------------------------------------------------------ float64 computation
cdef enum:
    _WIDE_CHUNK = 256  # elements of the float64 path's buffer of bn(x)


cdef void _wide_affine_channel(const elem* x, elem* dst, bint packed,
                               const Geometry* g, Py_ssize_t c, const double* k, int act,
                               const cbn_post* post) noexcept nogil:
    """Channel c of y = act((x - k[0]) * k[1] + k[2]) (or the post-operation post of it), the
    affine map in float64: into dst at x's offsets, or packed (element o * inner + j of the
    channel at dst[o * inner + j]).  bn(x) is rounded to the data's type before the epilogue
    (for a 16-bit format, before a post-operation too: one more rounding than the float32
    arithmetic of its other channels, in this edge case only)."""
    cdef elem s[_WIDE_CHUNK]
    cdef Py_ssize_t o, j, m, i, off, C = g.C, n = g.inner
    cdef elem* d
    for o in range(g.outer):
        off = (o * C + c) * n
        j = 0
        while j < n:
            m = min(<Py_ssize_t>_WIDE_CHUNK, n - j)
            for i in range(m):
                _st(s, i, (_ld(x[off + j + i]) - k[0]) * k[1] + k[2])
            d = dst + (o * n + j if packed else off + j)
            if post != NULL:
                _post_block(post, s, off + j, d, m, False)
            else:  # the identity affine map, then the pass's epilogue
                if elem is float:
                    cbn_affine_run_f32(s, d, m, 0.0, 1.0, -0.0, act)
                elif elem is double:
                    cbn_affine_run_f64(s, d, m, 0.0, 1.0, -0.0, act)
                elif elem is cbn_f16:
                    cbn_affine_run_f16(s, d, m, 0.0, 1.0, -0.0, act)
                else:
                    cbn_affine_run_bf16(s, d, m, 0.0, 1.0, -0.0, act)
            j += m


cdef void _wide_dx_channel(const elem* dy, const elem* ym, int act,
                           const elem* x, elem* dst, bint packed, const Geometry* g,
                           Py_ssize_t c, const double* k) noexcept nogil:
    """Channel c of dx = g * k[1] + (x - k[0]) * k[2] + k[3] in float64, g = dy through the
    activation act whose output is ym; placed as in _wide_affine_channel."""
    cdef Py_ssize_t o, j, i, C = g.C, n = g.inner
    cdef double gr
    for o in range(g.outer):
        for j in range(n):
            i = (o * C + c) * n + j
            gr = _ld(dy[i])
            if act != CBN_ACT_NONE and not (_ld(ym[i]) > 0):  # as cbn_act_grad: NaN in y gives 0
                gr = 0.0
            _st(dst, o * n + j if packed else i, gr * k[1] + (_ld(x[i]) - k[0]) * k[2] + k[3])


cdef elem* _wide_buffer(const Geometry* g, Wide* wd, const elem* tag) noexcept nogil:
    """The packed buffer of the wide channels' outputs (wd.packed; of tag's type), or NULL
    when out of memory."""
    wd.packed = malloc(wd.n * g.outer * g.inner * sizeof(elem))
    return <elem*>wd.packed


cdef int _wide_affine(const elem* x, const Geometry* g, Wide* wd, int act,
                      const cbn_post* post) noexcept nogil:
    """The wide channels' outputs, packed (wd.packed; none without wide channels).  0/-1."""
    cdef Py_ssize_t q, per = g.outer * g.inner
    cdef elem* packed
    if wd.n == 0:
        return 0
    packed = _wide_buffer(g, wd, x)
    if packed == NULL:
        return -1
    for q in range(wd.n):
        _wide_affine_channel(x, packed + q * per, True, g, wd.chan[q], wd.k + 4 * q, act, post)
    return 0


cdef int _wide_dx(const elem* dy, const elem* ym, int act, const elem* x,
                  const Geometry* g, Wide* wd) noexcept nogil:
    """The wide channels' dx, packed as in _wide_affine.  0/-1."""
    cdef Py_ssize_t q, per = g.outer * g.inner
    cdef elem* packed
    if wd.n == 0:
        return 0
    packed = _wide_buffer(g, wd, x)
    if packed == NULL:
        return -1
    for q in range(wd.n):
        _wide_dx_channel(dy, ym, act, x, packed + q * per, True, g, wd.chan[q], wd.k + 4 * q)
    return 0


cdef void _wide_finish(elem* out, const Geometry* g, Wide* wd) noexcept nogil:
    """Copy the packed outputs of the wide channels (if computed) into place, then free wd."""
    cdef Py_ssize_t q, o, j, c, C = g.C, n = g.inner, per = g.outer * g.inner
    cdef const elem* packed = <const elem*>wd.packed
    if packed != NULL:
        for q in range(wd.n):
            c = wd.chan[q]
            for o in range(g.outer):
                for j in range(n):
                    out[(o * C + c) * n + j] = packed[q * per + o * n + j]
    _wide_free(wd)
