/* cbn_tiles.h: register-tiled channels-last kernels (included by cbn_simd.h).
 *
 * Why: in the channels-last layout (rows of C channels) the per-channel state -- float64
 * accumulators for the reductions, coefficient vectors for the element-wise passes -- is a
 * vector across the row.  The row loops of cbn_simd.h reload and store that state from L1 for
 * every row or every four rows; with data arriving from L3 at ~50 GB/s per core those extra
 * loads and stores, not the data, set the pace (reductions at 2-4x a plain read, NHWC
 * inference at ~1.6x a copy).  Here a *tile* of columns keeps its state in registers:
 *
 * - reductions: a tile of CBN_COL_TV float64 vectors (CBN_DL columns each) walks a few rows
 *   (CBN_COL_RS) at a time, then the next tile of the same rows (still in L1).  A column tile
 *   jumps from row to row, which the hardware prefetchers do not follow when rows are wide, so
 *   with rows of 1 KB or more each row prefetches the same tile one sub-block ahead (see
 *   CBN_COL_PF).
 * - element-wise passes: when a whole row fits one tile (up to CBN_ROW_TV vectors of the data
 *   type: C <= 64 float32 with AVX-512), the coefficients stay in registers for all rows and
 *   the rows stream in memory order.
 *
 * Summation order is fixed by the code: per column, the rows of a sub-block are summed in order
 * from zero and that partial is added to the accumulator (two levels keep the rounding error
 * near that of the four-row pairs of the row loops), so results still depend only on the
 * shape, never on threads.
 * Columns that do not fill a tile go through the row loops of cbn_simd.h.
 */
#ifndef CBN_TILES_H
#define CBN_TILES_H

#include <stdint.h>

#ifdef CBN_VECTOR

/* Native vectors (cbn_vd, cbn_vf) per tile.  A reduction tile holds 3 x 4 float64 vectors
 * (shift, two sums: 12 of the 16 registers of AVX2 or SSE2): 32 columns with AVX-512, 16 with
 * AVX2, 8 with SSE2.  An element-wise tile spans 4 data vectors with AVX-512 (64 float32 / 32
 * float64 columns, coefficients in 12 of the 32 registers) and 8 with AVX2 or SSE2 (64 / 32
 * float32 columns): there the coefficients no longer all fit the 16 registers and some are
 * reloaded from the stack, which still beats the row loops (AVX2, NHWC C = 64 float32, one
 * thread, in one process: inference 1.32-1.56x -> 1.06x the time of AVX-512). */
#define CBN_COL_TV 4
#if defined(__AVX512F__)
#define CBN_ROW_TV 4
#else
#define CBN_ROW_TV 8
#endif
/* Rows per sub-block: the sub-block and the one being prefetched share L1; rows of 2 KB or more
 * map many lines to the same L1 sets, so those take 4 rows (measured faster), narrower ones 8. */
#define CBN_COL_RS(ld, T) ((ptrdiff_t)(ld) * (ptrdiff_t)sizeof(T) >= 2048 ? 4 : 8)

/* element-wise tiles: native vectors of the data type */
static inline cbn_vf cbn_vload_f32(const float *p) {
    cbn_vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void cbn_vstore_f32(float *p, cbn_vf v) { memcpy(p, &v, sizeof v); }
static inline cbn_vd cbn_vload_f64(const double *p) { return cbn_loadv_f64(p); }
static inline void cbn_vstore_f64(double *p, cbn_vd v) { cbn_storev_f64(p, v); }
static inline cbn_vf cbn_relu_f32(cbn_vf v) {
    const cbn_vf zero = {0};
    return (cbn_vf)((cbn_vi)v & ~(cbn_vi)(v < zero)); /* NaN < 0 is false: NaN stays */
}
static inline cbn_vd cbn_relu_f64(cbn_vd v) {
    const cbn_vd zero = {0};
    return (cbn_vd)((cbn_vl)v & ~(cbn_vl)(v < zero));
}

/* Prefetch `bytes` bytes at p + ahead elements (computed as an integer: the target may lie past
 * the end of the array, which a prefetch tolerates and pointer arithmetic would not). */
#define CBN_PREFETCH_AHEAD(p, ahead, bytes)                                                       \
    do {                                                                                          \
        uintptr_t a_ = (uintptr_t)(p) + (uintptr_t)(ahead) * sizeof(*(p));                      \
        if (pf_)                                                                                  \
            for (int b_ = 0; b_ < (int)(bytes); b_ += 64) __builtin_prefetch((const void *)(a_ + b_));\
    } while (0)
/* Whether the column tiles prefetch: only rows of at least CBN_COL_PF_MIN_BYTES.  Sub-blocks of
 * 256-byte rows span half a page, which the hardware prefetchers follow; there the software
 * prefetches only cost (measured from memory, one core, 64 float32 columns: column sums 1.5x ->
 * 1.25x a plain read without them, sums-and-dot 1.6x -> 1.0x; two threads, NHWC backward
 * float32 1.04x -> 0.85x the floor, float64 1.08x -> 0.95x).  Rows of 512 bytes gain from them
 * (statistics over 25.7 MB, A/B in one process, 1 and 2 threads: 128 float32 columns 1.95-2.28x
 * -> 1.78-2.07x a float64 sum, 64 float64 columns 2.06-2.47x -> 1.69-2.20x). */
#ifndef CBN_COL_PF_MIN_BYTES
#define CBN_COL_PF_MIN_BYTES 512
#endif
#define CBN_COL_PF(ld, T) ((ptrdiff_t)(ld) * (ptrdiff_t)sizeof(T) >= CBN_COL_PF_MIN_BYTES)

/* Rows of exactly CBN_RS_TV float64 vectors are reduced by *row streams*: the state of every
 * column (shift or mean, two sums) stays in registers while the rows go by in memory order.
 * With AVX-512 that is 8 vectors, 64 columns (NHWC with 64 channels), 24 of the 32 registers:
 * there the two column tiles of a row each jumped through every sub-block, which from memory
 * measured up to 1.9x a plain read (float64, 64 MiB, two threads; 4.4x at 16 MiB, one thread)
 * where the row stream runs at 1.1x (1.9x).  With 16 registers (AVX2, SSE2) a row stream holds
 * one tile, whose walk is a row stream already.  Per column the operations and their order are
 * those of the column tiles (sub-blocks of rs rows summed from zero, then added to the
 * accumulator), so results do not change. */
#if defined(__AVX512F__)
#define CBN_RS_TV 8
#else
#define CBN_RS_TV CBN_COL_TV
#endif
#define cbn_row_stream_fits(w) ((w) == CBN_DL * CBN_RS_TV)
/* for every vector v of a row stream: BODY (a constant trip count: the state stays in registers) */
#define CBN_RS_EACH(v, ...) for (int v = 0; v < CBN_RS_TV; v++) { __VA_ARGS__ }

#define CBN_DEFINE_COL_TILES(T, SFX)                                                             \
static inline void cbn_col_shifted_sums_stream_##SFX(double *restrict s1, double *restrict s2,  \
                                                     const T *restrict x, ptrdiff_t ld,          \
                                                     ptrdiff_t rows, const double *restrict k) { \
    const ptrdiff_t rs = CBN_COL_RS(ld, T);                                                      \
    const cbn_vd zero = {0};                                                                     \
    cbn_vd kv[CBN_RS_TV], a[CBN_RS_TV], q[CBN_RS_TV];                                            \
    CBN_ONE_INIT(one);                                                                           \
    CBN_RS_EACH(v, kv[v] = cbn_loadv_f64(k + CBN_DL * v);)                                       \
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += rs) {                                                \
        const ptrdiff_t r1 = r0 + rs < rows ? r0 + rs : rows;                                    \
        CBN_RS_EACH(v, a[v] = zero; q[v] = zero;)                                                \
        for (ptrdiff_t r = r0; r < r1; r++) {                                                    \
            const T *p = x + r * ld;                                                             \
            CBN_RS_EACH(v, cbn_vd d = CBN_SUB_ON_FMA(cbn_loadv_##SFX(p + CBN_DL * v), kv[v], one); \
                        a[v] += d;                                                               \
                        q[v] += d * d;)                                                          \
        }                                                                                        \
        CBN_RS_EACH(v, cbn_storev_f64(s1 + CBN_DL * v, cbn_loadv_f64(s1 + CBN_DL * v) + a[v]);   \
                       cbn_storev_f64(s2 + CBN_DL * v, cbn_loadv_f64(s2 + CBN_DL * v) + q[v]);)  \
    }                                                                                            \
}                                                                                                \
/* s1[j] += sum_r (x[r][j] - k[j]),  s2[j] += sum_r (x[r][j] - k[j])^2 */                        \
static inline void cbn_col_shifted_sums_##SFX(double *restrict s1, double *restrict s2,         \
                                              const T *restrict x, ptrdiff_t ld, ptrdiff_t rows, \
                                              const double *restrict k, ptrdiff_t w) {           \
    const ptrdiff_t tw = CBN_DL * CBN_COL_TV, wt = w / tw * tw, rs = CBN_COL_RS(ld, T);             \
    const int pf_ = CBN_COL_PF(ld, T);                                                           \
    if (cbn_row_stream_fits(w)) {                                                                \
        cbn_col_shifted_sums_stream_##SFX(s1, s2, x, ld, rows, k);                               \
        return;                                                                                  \
    }                                                                                            \
    CBN_ONE_INIT(one);                                                                           \
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += rs) {                                                \
        const ptrdiff_t r1 = r0 + rs < rows ? r0 + rs : rows;                                    \
        for (ptrdiff_t j = 0; j < wt; j += tw) {                                                 \
            cbn_vd kv[CBN_COL_TV], a[CBN_COL_TV], q[CBN_COL_TV];                                \
            for (int v = 0; v < CBN_COL_TV; v++) {                                               \
                const cbn_vd zero = {0};                                                        \
                kv[v] = cbn_loadv_f64(k + j + CBN_DL * v);                                          \
                a[v] = zero;                                                                     \
                q[v] = zero;                                                                     \
            }                                                                                    \
            const T *p = x + r0 * ld + j;                                                        \
            for (ptrdiff_t r = r0; r < r1; r++, p += ld) {                                       \
                CBN_PREFETCH_AHEAD(p, rs * ld, tw * sizeof(T));                                    \
                for (int v = 0; v < CBN_COL_TV; v++) {                                           \
                    cbn_vd d = CBN_SUB_ON_FMA(cbn_loadv_##SFX(p + CBN_DL * v), kv[v], one);         \
                    a[v] += d;                                                                   \
                    q[v] += d * d;                                                               \
                }                                                                                \
            }                                                                                    \
            for (int v = 0; v < CBN_COL_TV; v++) {                                               \
                cbn_storev_f64(s1 + j + CBN_DL * v, cbn_loadv_f64(s1 + j + CBN_DL * v) + a[v]);     \
                cbn_storev_f64(s2 + j + CBN_DL * v, cbn_loadv_f64(s2 + j + CBN_DL * v) + q[v]);     \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    if (wt < w) cbn_col_shifted_sums_rows_##SFX(s1 + wt, s2 + wt, x + wt, ld, rows, k + wt,     \
                                                 w - wt);                                        \
}                                                                                                \
/* sdy[j] += sum_r g[r][j]; if sdyx: sdyx[j] += sum_r g[r][j] * (x[r][j] - m[j]); g = dy, or dy \
 * where the fused ReLU's output ym > 0.  The g sums are added in the same order either way. */ \
static inline void cbn_col_sum_dot_stream_##SFX(double *restrict sdy, double *restrict sdyx,    \
                                                const T *restrict dy, const T *restrict ym,      \
                                                const T *restrict x, ptrdiff_t ld,               \
                                                ptrdiff_t rows, const double *restrict m) {      \
    const ptrdiff_t rs = CBN_COL_RS(ld, T);                                                      \
    const cbn_vd zero = {0};                                                                     \
    cbn_vd mv[CBN_RS_TV], a[CBN_RS_TV], b[CBN_RS_TV];                                            \
    CBN_ONE_INIT(one);                                                                           \
    CBN_RS_EACH(v, mv[v] = sdyx ? cbn_loadv_f64(m + CBN_DL * v) : zero;)                         \
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += rs) {                                                \
        const ptrdiff_t r1 = r0 + rs < rows ? r0 + rs : rows;                                    \
        CBN_RS_EACH(v, a[v] = zero; b[v] = zero;)                                                \
        if (sdyx && ym) {                                                                        \
            CBN_SUM_DOT_STREAM_LOOP(SFX, 1, 1)                                                   \
        } else if (sdyx) {                                                                       \
            CBN_SUM_DOT_STREAM_LOOP(SFX, 1, 0)                                                   \
        } else if (ym) {                                                                         \
            CBN_SUM_DOT_STREAM_LOOP(SFX, 0, 1)                                                   \
        } else {                                                                                 \
            CBN_SUM_DOT_STREAM_LOOP(SFX, 0, 0)                                                   \
        }                                                                                        \
        CBN_RS_EACH(v, cbn_storev_f64(sdy + CBN_DL * v, cbn_loadv_f64(sdy + CBN_DL * v) + a[v]); \
                       if (sdyx) cbn_storev_f64(sdyx + CBN_DL * v,                               \
                                                cbn_loadv_f64(sdyx + CBN_DL * v) + b[v]);)       \
    }                                                                                            \
}                                                                                                \
static inline void cbn_col_sum_dot_##SFX(double *restrict sdy, double *restrict sdyx,           \
                                         const T *restrict dy, const T *restrict ym,             \
                                         const T *restrict x, ptrdiff_t ld, ptrdiff_t rows,      \
                                         const double *restrict m, ptrdiff_t w) {                \
    const ptrdiff_t tw = CBN_DL * CBN_COL_TV, wt = w / tw * tw, rs = CBN_COL_RS(ld, T);             \
    const int pf_ = CBN_COL_PF(ld, T);                                                           \
    if (cbn_row_stream_fits(w)) {                                                                \
        cbn_col_sum_dot_stream_##SFX(sdy, sdyx, dy, ym, x, ld, rows, m);                         \
        return;                                                                                  \
    }                                                                                            \
    CBN_ONE_INIT(one);                                                                           \
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += rs) {                                                \
        const ptrdiff_t r1 = r0 + rs < rows ? r0 + rs : rows;                                    \
        for (ptrdiff_t j = 0; j < wt; j += tw) {                                                 \
            cbn_vd mv[CBN_COL_TV], a[CBN_COL_TV], b[CBN_COL_TV];                                \
            for (int v = 0; v < CBN_COL_TV; v++) {                                               \
                const cbn_vd zero = {0};                                                        \
                a[v] = zero;                                                                     \
                b[v] = zero;                                                                     \
                if (sdyx) mv[v] = cbn_loadv_f64(m + j + CBN_DL * v);                                \
            }                                                                                    \
            const ptrdiff_t o = r0 * ld + j;                                                     \
            if (sdyx && ym) {                                                                    \
                CBN_SUM_DOT_TILE_LOOP(SFX, 1, 1)                                                 \
            } else if (sdyx) {                                                                   \
                CBN_SUM_DOT_TILE_LOOP(SFX, 1, 0)                                                 \
            } else if (ym) {                                                                     \
                CBN_SUM_DOT_TILE_LOOP(SFX, 0, 1)                                                 \
            } else {                                                                             \
                CBN_SUM_DOT_TILE_LOOP(SFX, 0, 0)                                                 \
            }                                                                                    \
            for (int v = 0; v < CBN_COL_TV; v++) {                                               \
                cbn_storev_f64(sdy + j + CBN_DL * v, cbn_loadv_f64(sdy + j + CBN_DL * v) + a[v]);   \
                if (sdyx)                                                                        \
                    cbn_storev_f64(sdyx + j + CBN_DL * v,                                        \
                                   cbn_loadv_f64(sdyx + j + CBN_DL * v) + b[v]);                 \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    if (wt < w) cbn_col_sum_dot_rows_##SFX(sdy + wt, sdyx ? sdyx + wt : NULL, dy + wt,          \
                                            ym ? ym + wt : NULL, x + wt, ld, rows, m + wt,       \
                                            w - wt);                                             \
}

/* The row loop of one sum/dot tile; DOT and MASK are literal 0/1 so each instance is
 * branch-free.  Uses o, r0, r1, rs, ld, tw, a, b, mv from the enclosing scope. */
#define CBN_SUM_DOT_TILE_LOOP(SFX, DOT, MASK)                                                    \
    for (ptrdiff_t r = r0, i = o; r < r1; r++, i += ld) {                                        \
        CBN_PREFETCH_AHEAD(dy + i, rs * ld, tw * sizeof(*dy));                           \
        if (DOT) CBN_PREFETCH_AHEAD(x + i, rs * ld, tw * sizeof(*x));                    \
        if (MASK) CBN_PREFETCH_AHEAD(ym + i, rs * ld, tw * sizeof(*ym));                 \
        for (int v = 0; v < CBN_COL_TV; v++) {                                                   \
            cbn_vd g = cbn_loadv_##SFX(dy + i + CBN_DL * v);                                        \
            if (MASK) g = cbn_relu_maskv(g, cbn_loadv_##SFX(ym + i + CBN_DL * v));                  \
            a[v] += g;                                                                           \
            if (DOT) b[v] += g * CBN_SUB_ON_FMA(cbn_loadv_##SFX(x + i + CBN_DL * v), mv[v], one);   \
        }                                                                                        \
    }

/* The rows of one row-stream sub-block (as CBN_SUM_DOT_TILE_LOOP, whole rows, no prefetch). */
#define CBN_SUM_DOT_STREAM_LOOP(SFX, DOT, MASK)                                                  \
    for (ptrdiff_t r = r0, i = r0 * ld; r < r1; r++, i += ld) {                                  \
        CBN_RS_EACH(v, cbn_vd g = cbn_loadv_##SFX(dy + i + CBN_DL * v);                          \
                       if (MASK) g = cbn_relu_maskv(g, cbn_loadv_##SFX(ym + i + CBN_DL * v));    \
                       a[v] += g;                                                                \
                       if (DOT) b[v] += g * CBN_SUB_ON_FMA(cbn_loadv_##SFX(x + i + CBN_DL * v),  \
                                                           mv[v], one);)                         \
    }

CBN_DEFINE_COL_TILES(float, f32)
CBN_DEFINE_COL_TILES(double, f64)

/* for every row and every full vector v of the tile: BODY, with i the element offset */
#define CBN_TILE_ROWS(VL, ...)                                                                   \
    for (ptrdiff_t r = 0; r < rows; r++)                                                         \
        for (int v = 0; v < CBN_ROW_TV; v++)                                                     \
            if (v < nv) {                                                                        \
                ptrdiff_t i = r * ld + (VL) * v;                                                 \
                __VA_ARGS__                                                                      \
            }

/* Element-wise tiles: rows of w <= CBN_ROW_TV * VL columns with the coefficients in registers.
 * x and y may be the same array (each element is read before it is written), so they are not
 * restrict-qualified; the coefficients are separate arrays.  nv full vectors per row take the
 * tile; the w - nv * VL trailing columns go through the row loops. */
#define CBN_DEFINE_ROW_TILES(T, SFX, VT, VL)                                                     \
static inline int cbn_row_tile_fits_##SFX(ptrdiff_t w) {                                         \
    return w >= (VL) && w <= CBN_ROW_TV * (VL);                                                  \
}                                                                                                \
static inline void cbn_affine_tile_##SFX(const T *x, T *y, ptrdiff_t ld, ptrdiff_t rows,        \
                                         ptrdiff_t w, const T *restrict hi,                      \
                                         const T *restrict sc, const T *restrict sh, int relu) { \
    const int nv = (int)(w / (VL));                                                              \
    VT H[CBN_ROW_TV], S[CBN_ROW_TV], B[CBN_ROW_TV];                                              \
    for (int v = 0; v < CBN_ROW_TV; v++) {                                                       \
        if (v < nv) {                                                                            \
            H[v] = cbn_vload_##SFX(hi + (VL) * v);                                               \
            S[v] = cbn_vload_##SFX(sc + (VL) * v);                                               \
            B[v] = cbn_vload_##SFX(sh + (VL) * v);                                               \
        }                                                                                        \
    }                                                                                            \
    if (relu) {                                                                                  \
        CBN_TILE_ROWS((VL), cbn_vstore_##SFX(y + i, cbn_relu_##SFX((cbn_vload_##SFX(x + i) - H[v]) \
                                                               * S[v] + B[v]));)                 \
    } else {                                                                                     \
        CBN_TILE_ROWS((VL), cbn_vstore_##SFX(y + i, (cbn_vload_##SFX(x + i) - H[v]) * S[v]      \
                                                + B[v]);)                                        \
    }                                                                                            \
    if (nv * (VL) < w) {                                                                         \
        ptrdiff_t j = nv * (VL);                                                                 \
        cbn_affine_any_##SFX(x + j, y + j, ld, rows, w - j, hi + j, sc + j, sh + j, relu);       \
    }                                                                                            \
}                                                                                                \
/* dx = g * k1 + (x - hi) * k2 + k3, g = dy or dy where ym > 0; dx aliases none of the inputs */\
static inline void cbn_dx_tile_##SFX(const T *restrict dy, const T *restrict ym,                \
                                     const T *restrict x, T *restrict dx, ptrdiff_t ld,          \
                                     ptrdiff_t rows, ptrdiff_t w, const T *restrict hi,          \
                                     const T *restrict k1, const T *restrict k2,                 \
                                     const T *restrict k3) {                                     \
    const int nv = (int)(w / (VL));                                                              \
    const VT zero = {0};                                                                         \
    VT H[CBN_ROW_TV], K1[CBN_ROW_TV], K2[CBN_ROW_TV], K3[CBN_ROW_TV];                            \
    for (int v = 0; v < CBN_ROW_TV; v++) {                                                       \
        if (v < nv) {                                                                            \
            H[v] = cbn_vload_##SFX(hi + (VL) * v);                                               \
            K1[v] = cbn_vload_##SFX(k1 + (VL) * v);                                              \
            K2[v] = cbn_vload_##SFX(k2 + (VL) * v);                                              \
            K3[v] = cbn_vload_##SFX(k3 + (VL) * v);                                              \
        }                                                                                        \
    }                                                                                            \
    if (ym) {                                                                                    \
        CBN_TILE_ROWS((VL), VT g = cbn_vload_##SFX(dy + i);                                      \
                      g = (VT)((__typeof__(g > zero))g & (cbn_vload_##SFX(ym + i) > zero));      \
                      cbn_vstore_##SFX(dx + i, g * K1[v] + (cbn_vload_##SFX(x + i) - H[v]) * K2[v] \
                                               + K3[v]);)                                        \
    } else {                                                                                     \
        CBN_TILE_ROWS((VL), cbn_vstore_##SFX(dx + i, cbn_vload_##SFX(dy + i) * K1[v]             \
                                             + (cbn_vload_##SFX(x + i) - H[v]) * K2[v] + K3[v]);)\
    }                                                                                            \
    if (nv * (VL) < w) {                                                                         \
        ptrdiff_t j = nv * (VL);                                                                 \
        cbn_dx_rows4_##SFX(dy + j, ym ? ym + j : NULL, x + j, dx + j, ld, rows, w - j, hi + j,   \
                           k1 + j, k2 + j, k3 + j);                                              \
    }                                                                                            \
}                                                                                                \
static inline void cbn_affine_##SFX(const T *x, T *y, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t w, \
                                    const T *hi, const T *sc, const T *sh, int relu) {           \
    if (cbn_row_tile_fits_##SFX(w))                                                              \
        cbn_affine_tile_##SFX(x, y, ld, rows, w, hi, sc, sh, relu);                              \
    else                                                                                         \
        cbn_affine_any_##SFX(x, y, ld, rows, w, hi, sc, sh, relu);                               \
}                                                                                                \
static inline void cbn_dx_rows_##SFX(const T *dy, const T *ym, const T *x, T *dx, ptrdiff_t ld,  \
                                     ptrdiff_t rows, ptrdiff_t w, const T *hi, const T *k1,      \
                                     const T *k2, const T *k3) {                                 \
    if (cbn_row_tile_fits_##SFX(w))                                                              \
        cbn_dx_tile_##SFX(dy, ym, x, dx, ld, rows, w, hi, k1, k2, k3);                           \
    else                                                                                         \
        cbn_dx_rows4_##SFX(dy, ym, x, dx, ld, rows, w, hi, k1, k2, k3);                          \
}

CBN_DEFINE_ROW_TILES(float, f32, cbn_vf, CBN_VB / 4)
CBN_DEFINE_ROW_TILES(double, f64, cbn_vd, CBN_VB / 8)

#else /* no vector extensions: the row loops are the kernels */

#define CBN_DEFINE_TILE_FALLBACKS(T, SFX)                                                        \
static inline void cbn_col_shifted_sums_##SFX(double *restrict s1, double *restrict s2,         \
                                              const T *restrict x, ptrdiff_t ld, ptrdiff_t rows, \
                                              const double *restrict k, ptrdiff_t w) {           \
    cbn_col_shifted_sums_rows_##SFX(s1, s2, x, ld, rows, k, w);                                  \
}                                                                                                \
static inline void cbn_col_sum_dot_##SFX(double *restrict sdy, double *restrict sdyx,           \
                                         const T *restrict dy, const T *restrict ym,             \
                                         const T *restrict x, ptrdiff_t ld, ptrdiff_t rows,      \
                                         const double *restrict m, ptrdiff_t w) {                \
    cbn_col_sum_dot_rows_##SFX(sdy, sdyx, dy, ym, x, ld, rows, m, w);                            \
}                                                                                                \
static inline void cbn_affine_##SFX(const T *x, T *y, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t w, \
                                    const T *hi, const T *sc, const T *sh, int relu) {           \
    cbn_affine_any_##SFX(x, y, ld, rows, w, hi, sc, sh, relu);                                   \
}                                                                                                \
static inline void cbn_dx_rows_##SFX(const T *dy, const T *ym, const T *x, T *dx, ptrdiff_t ld,  \
                                     ptrdiff_t rows, ptrdiff_t w, const T *hi, const T *k1,      \
                                     const T *k2, const T *k3) {                                 \
    cbn_dx_rows4_##SFX(dy, ym, x, dx, ld, rows, w, hi, k1, k2, k3);                              \
}
CBN_DEFINE_TILE_FALLBACKS(float, f32)
CBN_DEFINE_TILE_FALLBACKS(double, f64)

#endif /* CBN_VECTOR */
#endif /* CBN_TILES_H */
