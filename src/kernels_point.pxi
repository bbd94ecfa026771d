# Included by _kernels.pyx (compiled per SIMD level; declarations and the fused type there).
# Point functions of the kernels: element loads and stores, the run and column reductions of
# cbn_kernels.h per element type, the block moments and Chan's merge, the centre split.

# ------------------------------------------------------------------------------- point functions
cdef inline double _ld(elem v) noexcept nogil:
    """An element as float64 (exact)."""
    if elem is cbn_f16:
        return cbn_f16_to_f32(v)
    elif elem is cbn_bf16:
        return cbn_bf16_to_f32(v)
    else:
        return v


cdef inline void _st(elem* p, Py_ssize_t i, double v) noexcept nogil:
    """p[i] = v rounded once to the element type (to nearest, ties to even)."""
    if elem is cbn_f16:
        p[i] = cbn_f64_to_f16(v)
    elif elem is cbn_bf16:
        p[i] = cbn_f64_to_bf16(v)
    else:
        p[i] = <elem>v


cdef inline double _sum(const elem* x, Py_ssize_t n) noexcept nogil:
    if elem is float:
        return cbn_sum_f32(x, n)
    elif elem is double:
        return cbn_sum_f64(x, n)
    elif elem is cbn_f16:
        return cbn_sum_f16(x, n)
    else:
        return cbn_sum_bf16(x, n)


cdef inline void _shifted_sums(const elem* x, Py_ssize_t n, double k, double* s1,
                               double* s2) noexcept nogil:
    if elem is float:
        cbn_shifted_sums_f32(x, n, k, s1, s2)
    elif elem is double:
        cbn_shifted_sums_f64(x, n, k, s1, s2)
    elif elem is cbn_f16:
        cbn_shifted_sums_f16(x, n, k, s1, s2)
    else:
        cbn_shifted_sums_bf16(x, n, k, s1, s2)


cdef inline const elem* _at(const elem* p, Py_ssize_t off) noexcept nogil:
    """p + off, keeping NULL (no activation's saved output) as NULL."""
    return p + off if p != NULL else NULL


cdef inline floating _act_grad(floating g, floating y, int act) noexcept nogil:
    """g through the activation act given its output y (cbn_epilogue-inl.h)."""
    if floating is float:
        return cbn_act_grad_f32(g, y, act)
    else:
        return cbn_act_grad_f64(g, y, act)


cdef inline void _sum_like_dot(const elem* dy, const elem* ym, int act, Py_ssize_t n,
                               double* sdy) noexcept nogil:
    """sdy += sum(g), g = dy through the activation act whose output is ym (cbn_epilogue.h)."""
    if elem is float:
        cbn_sum_like_dot_f32(dy, ym, n, sdy, act)
    elif elem is double:
        cbn_sum_like_dot_f64(dy, ym, n, sdy, act)
    elif elem is cbn_f16:
        cbn_sum_like_dot_f16(dy, ym, n, sdy, act)
    else:
        cbn_sum_like_dot_bf16(dy, ym, n, sdy, act)


cdef inline void _sum_dot(const elem* dy, const elem* ym, int act, const elem* x,
                          Py_ssize_t n,
                          double m, double* sdy, double* sdyx) noexcept nogil:
    """sdy += sum(g), sdyx += sum(g * (x - m)), g as in _sum_like_dot."""
    if elem is float:
        cbn_sum_dot_f32(dy, ym, x, n, m, sdy, sdyx, act)
    elif elem is double:
        cbn_sum_dot_f64(dy, ym, x, n, m, sdy, sdyx, act)
    elif elem is cbn_f16:
        cbn_sum_dot_f16(dy, ym, x, n, m, sdy, sdyx, act)
    else:
        cbn_sum_dot_bf16(dy, ym, x, n, m, sdy, sdyx, act)


cdef inline void _shifted_sums8(const elem* x, Py_ssize_t n, double k, double* s1_8,
                                double* s2_8) noexcept nogil:
    if elem is float:
        cbn_shifted_sums8_f32(x, n, k, s1_8, s2_8)
    elif elem is double:
        cbn_shifted_sums8_f64(x, n, k, s1_8, s2_8)
    elif elem is cbn_f16:
        cbn_shifted_sums8_f16(x, n, k, s1_8, s2_8)
    else:
        cbn_shifted_sums8_bf16(x, n, k, s1_8, s2_8)


cdef inline void _partial_sums8(const elem* x, Py_ssize_t n, float c, double* s1_8,
                                double* s2_8) noexcept nogil:
    """The two-level form of _shifted_sums8 about the centre c (the 16-bit formats only)."""
    if elem is cbn_f16:
        cbn_partial_sums8_f16(x, n, c, s1_8, s2_8)
    elif elem is cbn_bf16:
        cbn_partial_sums8_bf16(x, n, c, s1_8, s2_8)


cdef inline void _partial_sums(const elem* x, Py_ssize_t n, float c, double* s1,
                               double* s2) noexcept nogil:
    """s1 += sum(x - c), s2 += sum((x - c)^2) over x[0:n], two-level (_partial_sums8, then
    cbn_hsum8_array)."""
    cdef double a8[8]
    cdef double q8[8]
    cdef int l
    for l in range(8):
        a8[l] = 0.0
        q8[l] = 0.0
    _partial_sums8(x, n, c, a8, q8)
    s1[0] += cbn_hsum8_array(a8)
    s2[0] += cbn_hsum8_array(q8)


cdef inline void _col_partial_sums(double* s1, double* s2, const elem* x, Py_ssize_t ld,
                                   Py_ssize_t rows, const float* c, Py_ssize_t w,
                                   int threads) noexcept nogil:
    """The two-level form of _col_shifted_sums about the centres c (the 16-bit formats only)."""
    if elem is cbn_f16:
        cbn_col_partial_sums_f16(s1, s2, x, ld, rows, c, w, threads)
    elif elem is cbn_bf16:
        cbn_col_partial_sums_bf16(s1, s2, x, ld, rows, c, w, threads)


cdef inline void _partial_sum_dot8(const elem* dy, const elem* ym, const elem* x,
                                   Py_ssize_t n, float h, double* sdy8, double* sdyx8,
                                   int act) noexcept nogil:
    """The two-level form of _sum_dot8 about h, the mean rounded to float32 (the 16-bit
    formats only): sdyx8 then sums g (x - h)."""
    if elem is cbn_f16:
        cbn_partial_sum_dot8_f16(dy, ym, x, n, h, sdy8, sdyx8, act)
    elif elem is cbn_bf16:
        cbn_partial_sum_dot8_bf16(dy, ym, x, n, h, sdy8, sdyx8, act)


cdef inline void _col_partial_sum_dot(double* sdy, double* sdyx, const elem* dy, const elem* ym,
                                      int act, const elem* x, Py_ssize_t ld, Py_ssize_t rows,
                                      const float* h, Py_ssize_t w, int threads) noexcept nogil:
    """The two-level form of _col_sum_dot about h (the 16-bit formats only)."""
    if elem is cbn_f16:
        cbn_col_partial_sum_dot_f16(sdy, sdyx, dy, ym, x, ld, rows, h, w, act, threads)
    elif elem is cbn_bf16:
        cbn_col_partial_sum_dot_bf16(sdy, sdyx, dy, ym, x, ld, rows, h, w, act, threads)


cdef inline void _sum_dot8(const elem* dy, const elem* ym, const elem* x, Py_ssize_t n,
                           double m, double* sdy8, double* sdyx8, int act) noexcept nogil:
    if elem is float:
        cbn_sum_dot8_f32(dy, ym, x, n, m, sdy8, sdyx8, act)
    elif elem is double:
        cbn_sum_dot8_f64(dy, ym, x, n, m, sdy8, sdyx8, act)
    elif elem is cbn_f16:
        cbn_sum_dot8_f16(dy, ym, x, n, m, sdy8, sdyx8, act)
    else:
        cbn_sum_dot8_bf16(dy, ym, x, n, m, sdy8, sdyx8, act)


cdef inline void _col_shifted_sums(double* s1, double* s2, const elem* x, Py_ssize_t ld,
                                   Py_ssize_t rows, const double* k, Py_ssize_t w,
                                   int threads) noexcept nogil:
    """threads: the pass's team (sets the tiles' memory blocks, never the sums)."""
    if elem is float:
        cbn_col_shifted_sums_f32(s1, s2, x, ld, rows, k, w, threads)
    elif elem is double:
        cbn_col_shifted_sums_f64(s1, s2, x, ld, rows, k, w, threads)
    elif elem is cbn_f16:
        cbn_col_shifted_sums_f16(s1, s2, x, ld, rows, k, w, threads)
    else:
        cbn_col_shifted_sums_bf16(s1, s2, x, ld, rows, k, w, threads)


cdef inline void _col_sum_dot(double* sdy, double* sdyx, const elem* dy, const elem* ym,
                              int act,
                              const elem* x, Py_ssize_t ld, Py_ssize_t rows, const double* m,
                              Py_ssize_t w, int threads) noexcept nogil:
    """sdyx NULL: only the g sums (g = dy through the activation act whose output is ym);
    threads as in _col_shifted_sums."""
    if elem is float:
        cbn_col_sum_dot_f32(sdy, sdyx, dy, ym, x, ld, rows, m, w, act, threads)
    elif elem is double:
        cbn_col_sum_dot_f64(sdy, sdyx, dy, ym, x, ld, rows, m, w, act, threads)
    elif elem is cbn_f16:
        cbn_col_sum_dot_f16(sdy, sdyx, dy, ym, x, ld, rows, m, w, act, threads)
    else:
        cbn_col_sum_dot_bf16(sdy, sdyx, dy, ym, x, ld, rows, m, w, act, threads)


cdef inline void _block_range(const Geometry* g, Py_ssize_t b, Py_ssize_t* o0, Py_ssize_t* o1,
                              Py_ssize_t* i0, Py_ssize_t* i1) noexcept nogil:
    """Channel-major: block b of a channel as rows [o0, o1) of its runs, elements [i0, i1) of
    each (one piece of one run when runs are split into g.pieces; else whole runs)."""
    cdef Py_ssize_t p
    if g.pieces > 1:
        o0[0] = b // g.pieces
        o1[0] = o0[0] + 1
        p = b % g.pieces
        i0[0] = (p * g.inner) // g.pieces
        i1[0] = ((p + 1) * g.inner) // g.pieces
    else:
        o0[0] = b * g.rows_per_block
        o1[0] = min(o0[0] + g.rows_per_block, g.outer)
        i0[0] = 0
        i1[0] = g.inner


cdef inline void _block_moments(double inv_nb, double k, double kref, double s1, double s2,
                                double* mean_out, double* m2_out,
                                bint clamp=True) noexcept nogil:
    """Moments of a block of nb = 1 / inv_nb values from its sums shifted by k, an element of
    the block: then (k - mean)^2 <= nb * var, so the cancellation below costs at most a factor
    nb + 1.  OUT mean_out is the block mean *less kref*, the channel's reference element (see
    _channel_ref): merges then subtract small offsets, not two rounded copies of a huge mean
    (float64 data at 1e10 +- 1 lost 7e-8 of its variance that way)."""
    cdef double t = s1 * inv_nb
    cdef double q = s2 - s1 * t
    mean_out[0] = (k - kref) + t
    # clamp rounding below zero, but let NaN through (a NaN/Inf input must poison its channel);
    # the two-level sums do not clamp (clamp False): their certificate's bound assumes the
    # merges are Chan's algebra, and a negative total is refused anyway
    m2_out[0] = 0.0 if (clamp and q < 0.0) else q


cdef inline void _block_moments_columns(double inv_nb, const double* k, const elem* kref,
                                        double* s1_mean, double* s2_m2,
                                        Py_ssize_t w, bint clamp=True) noexcept nogil:
    """_block_moments for w columns, in place: IN/OUT s1 -> mean less kref and s2 -> M2
    (vectorised; the same operations in the same order as the scalar form)."""
    cdef Py_ssize_t j
    cdef double t, q
    for j in range(w):
        t = s1_mean[j] * inv_nb
        q = s2_m2[j] - s1_mean[j] * t
        s1_mean[j] = (k[j] - _ld(kref[j])) + t
        s2_m2[j] = 0.0 if (clamp and q < 0.0) else q


cdef void _merge(double* n_a, double* mean_a, double* m2_a,
                 double n_b, double mean_b, double m2_b) noexcept nogil:
    """Chan et al.: fold the moments (n_b, mean_b, m2_b) into (n_a, mean_a, m2_a), IN/OUT.

    Not inline on purpose: every merge in the module runs this one compiled body, so the
    rounding is the same whichever code path (fused or partials) performed it."""
    cdef double n = n_a[0] + n_b
    cdef double delta, f
    if n_b == 0:
        return
    if n_a[0] == 0:  # the formula below gives the same, but inf * 0 = NaN once delta^2 overflows
        mean_a[0] = mean_b
        m2_a[0] = m2_b
        n_a[0] = n_b
        return
    delta = mean_b - mean_a[0]
    f = n_b / n
    mean_a[0] = mean_a[0] + delta * f
    m2_a[0] = m2_a[0] + m2_b + delta * delta * (n_a[0] * f)
    n_a[0] = n


cdef void _merge_columns(double* mean_a, double* m2_a, double n_a,
                         const double* mean_b, const double* m2_b, double n_b,
                         Py_ssize_t ncols) noexcept nogil:
    """Vector form of _merge for the channels-last layout (counts are equal across columns).

    IN/OUT mean_a, m2_a; IN mean_b, m2_b.  Same formula, same order of operations."""
    cdef double n = n_a + n_b
    cdef double f, g, delta
    cdef Py_ssize_t j
    if n_b == 0:
        return
    if n_a == 0:  # as in _merge: a copy, bit-identical to the formula when it is finite
        for j in range(ncols):
            mean_a[j] = mean_b[j]
            m2_a[j] = m2_b[j]
        return
    f = n_b / n
    g = n_a * f
    for j in range(ncols):
        delta = mean_b[j] - mean_a[j]
        mean_a[j] = mean_a[j] + delta * f
        m2_a[j] = m2_a[j] + m2_b[j] + delta * delta * g


cdef inline void _split_centre(double centre, floating* hi, floating* lo) noexcept nogil:
    """centre ~= hi + lo with hi, lo of the input type (lo is 0 for double)."""
    hi[0] = <floating>centre
    lo[0] = <floating>(centre - <double>hi[0])
