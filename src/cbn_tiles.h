/* cbn_tiles.h: register-tiled channels-last kernels: why, and the tile geometry (the kernels,
 * per element type: cbn_tiles-inl.h).
 *
 * Why: in the channels-last layout (rows of C channels) the per-channel state -- float64
 * accumulators for the reductions, coefficient vectors for the element-wise passes -- is a
 * vector across the row.  The row loops of cbn_rows-inl.h reload and store that state from L1 for
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
 * Columns that do not fill a tile go through the row loops of cbn_rows-inl.h.
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

/* Sub-blocks per *memory block*: a tile walks the rows of a memory block, its accumulators in
 * registers, adding each sub-block's partial to them in order (so the sums are those of one
 * sub-block at a time, bit for bit), then the next tile walks the same rows; the prefetches
 * run one memory block ahead.  Fewer accumulator loads and stores, and a longer walk per
 * tile, let the arithmetic overlap the loads when the cores share the memory bus; alone, a
 * core does best with short walks.  Measured (4096 x 1024 float32 backward sums, from memory,
 * AVX-512): one thread, 8 rows per block 1.22 ms against 1.28-1.35 ms one sub-block at a time;
 * two threads, 64 KB of rows per block 0.69 ms against 1.00 ms (two-array read: 0.58 ms;
 * 1024 x 256 and 2048 x 512 rows alike).  Results do not depend on it. */
#define CBN_COL_MB_ONE_THREAD_ROWS 8
#define CBN_COL_MB_SHARED_BYTES 65536
static inline ptrdiff_t cbn_col_block_subs(ptrdiff_t ld, size_t itemsize, ptrdiff_t rs,
                                           int threads) {
    const ptrdiff_t rows = threads > 1
        ? CBN_COL_MB_SHARED_BYTES / ((ld > 0 ? ld : 1) * (ptrdiff_t)itemsize)
        : CBN_COL_MB_ONE_THREAD_ROWS;
    return rows > rs ? rows / rs : 1;
}

/* element-wise tiles: native vectors of the data type */
static inline cbn_vf cbn_vload_f32(const float *p) {
    cbn_vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void cbn_vstore_f32(float *p, cbn_vf v) { memcpy(p, &v, sizeof v); }
static inline cbn_vd cbn_vload_f64(const double *p) { return cbn_loadv_f64(p); }
static inline void cbn_vstore_f64(double *p, cbn_vd v) { cbn_storev_f64(p, v); }
/* pairs of vectors (the 16-bit formats' interface, cbn_half-inl.h): two singles, in order */
static inline void cbn_vload2_f32(const float *p, cbn_vf *a, cbn_vf *b) {
    *a = cbn_vload_f32(p);
    *b = cbn_vload_f32(p + CBN_VB / 4);
}
static inline void cbn_vstore2_f32(float *p, cbn_vf a, cbn_vf b) {
    cbn_vstore_f32(p, a);
    cbn_vstore_f32(p + CBN_VB / 4, b);
}
static inline void cbn_coef2_f32(const float *p, cbn_vf *a, cbn_vf *b) { cbn_vload2_f32(p, a, b); }
static inline void cbn_vload2_f64(const double *p, cbn_vd *a, cbn_vd *b) {
    *a = cbn_vload_f64(p);
    *b = cbn_vload_f64(p + CBN_VB / 8);
}
static inline void cbn_vstore2_f64(double *p, cbn_vd a, cbn_vd b) {
    cbn_vstore_f64(p, a);
    cbn_vstore_f64(p + CBN_VB / 8, b);
}
static inline void cbn_coef2_f64(const double *p, cbn_vd *a, cbn_vd *b) {
    cbn_vload2_f64(p, a, b);
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

/* The row loop of one sum/dot tile; DOT (0/1) and ACT (an activation code, cbn_epilogue.h) are
 * constants so each instance is branch-free.  Uses o, r0, r1, mb, ld, tw, a, b, mv from the
 * enclosing scope. */
#define CBN_SUM_DOT_TILE_LOOP(DOT, ACT)                                                    \
    for (ptrdiff_t r = r0, i = o; r < r1; r++, i += ld) {                                        \
        CBN_PREFETCH_AHEAD(dy + i, mb * ld, tw * sizeof(*dy));                           \
        if (DOT) CBN_PREFETCH_AHEAD(x + i, mb * ld, tw * sizeof(*x));                    \
        if (ACT) CBN_PREFETCH_AHEAD(ym + i, mb * ld, tw * sizeof(*ym));                   \
        for (int v = 0; v < CBN_COL_TV; v++) {                                                   \
            cbn_vd g = SFX(cbn_loadv)(dy + i + CBN_DL * v);                                        \
            if (ACT) g = cbn_act_grad_vd(g, SFX(cbn_loadv)(ym + i + CBN_DL * v), ACT);            \
            a[v] += g;                                                                           \
            if (DOT) b[v] += g * CBN_SUB_ON_FMA(SFX(cbn_loadv)(x + i + CBN_DL * v), mv[v], one);   \
        }                                                                                        \
    }

/* The rows of one row-stream sub-block (as CBN_SUM_DOT_TILE_LOOP, whole rows, no prefetch). */
#define CBN_SUM_DOT_STREAM_LOOP(DOT, ACT)                                                  \
    for (ptrdiff_t r = r0, i = r0 * ld; r < r1; r++, i += ld) {                                  \
        CBN_RS_EACH(v, cbn_vd g = SFX(cbn_loadv)(dy + i + CBN_DL * v);                          \
                       if (ACT) g = cbn_act_grad_vd(g, SFX(cbn_loadv)(ym + i + CBN_DL * v), ACT);\
                       a[v] += g;                                                                \
                       if (DOT) b[v] += g * CBN_SUB_ON_FMA(SFX(cbn_loadv)(x + i + CBN_DL * v),  \
                                                           mv[v], one);)                         \
    }

/* for every row, the full vectors of the tile in pairs (PAIR, v and v + 1 at offset i),
 * the last one alone when nv is odd (BODY) */
#define CBN_TILE_ROWS_PAIRED(VL, PAIR, BODY)                                                     \
    for (ptrdiff_t r = 0; r < rows; r++)                                                         \
        for (int v = 0; v < CBN_ROW_TV; v += 2) {                                                \
            ptrdiff_t i = r * ld + (VL) * v;                                                     \
            if (v + 1 < nv) { PAIR }                                                             \
            else if (v < nv) { BODY }                                                            \
        }
/* for every row and every full vector v of the tile: BODY, with i the element offset */
#define CBN_TILE_ROWS(VL, ...)                                                                   \
    for (ptrdiff_t r = 0; r < rows; r++)                                                         \
        for (int v = 0; v < CBN_ROW_TV; v++)                                                     \
            if (v < nv) {                                                                        \
                ptrdiff_t i = r * ld + (VL) * v;                                                 \
                __VA_ARGS__                                                                      \
            }

#endif /* CBN_VECTOR */
#endif /* CBN_TILES_H */
