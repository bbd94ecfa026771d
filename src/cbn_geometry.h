/* cbn_geometry.h: how an array is viewed and decomposed, and the tuning constants behind it.
 *
 * Every C-contiguous array with channel axis a is viewed as (outer, C, inner).  The statistics
 * decompose each channel into blocks, grouped into at most CBN_MAX_SEGMENTS segments (see the
 * design note, src/ARCHITECTURE.md); the decomposition is a pure function of the shape and the
 * element size, so results never depend on the thread count.  The compile-once module computes
 * the geometry; every SIMD level's kernels read it.
 */
#ifndef CBN_GEOMETRY_H
#define CBN_GEOMETRY_H

#include <stddef.h>

/* Bytes of data per channel in one statistics block of the channel-major layout (one shifted
 * single pass; the cancellation bound is a factor of the block's count + 1). */
#define CBN_BLOCK_BYTES 32768
/* Minimum rows per block in the channels-last layout: amortises the per-block set-up,
 * finalising and merge over the columns (the shifted-sum bound on cancellation is then a factor
 * 257, 8 of float64's 53 bits).  Against 64 rows, measured in one process (NHWC with 64 and 128
 * channels, float32 and float64, 1 and 2 threads): statistics 0.88-0.98x the time, training
 * forward 0.88-0.99x. */
#define CBN_MIN_ROWS_B 256
/* Channels-last tasks cover at most this many columns (bounds the per-thread accumulators). */
#define CBN_MAX_COLUMNS 8192
/* Upper bound on segments per channel: bounds the partials to O(C * MAX_SEGMENTS) doubles. */
#define CBN_MAX_SEGMENTS 16
/* Below this many elements a call runs on the calling thread only. */
#define CBN_PARALLEL_MIN_ELEMS 65536
/* Channel-major runs shorter than this keep plain stores even when the output streams: each run
 * starts and ends with plain stores up to a line boundary (measured, 2 threads, 51 MB pass:
 * runs of 196 B streamed 2x slower than plain, 784 B even, 3 KB and more 0.8x). */
#define CBN_NT_MIN_RUN_BYTES 512
/* Outputs starting up to this many bytes past an input modulo 4 KB are written walking down in
 * memory (cbn_reverse.h; measured: 64 bytes past costs 1.12-1.5x, 256 and more nothing). */
#define CBN_ALIAS_WINDOW 256

typedef struct {
    ptrdiff_t outer, C, inner;
    ptrdiff_t n;              /* elements per channel (outer * inner) */
    /* channel-major blocking */
    ptrdiff_t rows_per_block; /* consecutive o's per block (inner < block elems) */
    ptrdiff_t pieces;         /* pieces per run (inner >= block elems), else 1 */
    ptrdiff_t nblocks;        /* blocks per channel */
    ptrdiff_t nseg;           /* segments per channel */
    /* channels-last blocking */
    ptrdiff_t col_width;      /* channels per task chunk */
    ptrdiff_t ncol_chunks;
} cbn_geometry;

static inline ptrdiff_t cbn_max_pd(ptrdiff_t a, ptrdiff_t b) { return a > b ? a : b; }
static inline ptrdiff_t cbn_min_pd(ptrdiff_t a, ptrdiff_t b) { return a < b ? a : b; }

static inline cbn_geometry cbn_geometry_of(ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                                           ptrdiff_t itemsize) {
    cbn_geometry g;
    const ptrdiff_t blk = CBN_BLOCK_BYTES / itemsize;
    g.outer = outer;
    g.C = C;
    g.inner = inner;
    g.n = outer * inner;
    g.col_width = C;
    g.ncol_chunks = 1;
    if (inner > 1) {
        if (inner >= blk) {
            g.pieces = (inner + blk - 1) / blk;
            g.rows_per_block = 1;
            g.nblocks = outer * g.pieces;
        } else {
            g.pieces = 1;
            g.rows_per_block = cbn_max_pd(1, blk / inner);
            g.nblocks = (outer + g.rows_per_block - 1) / g.rows_per_block;
        }
    } else {
        g.pieces = 1;
        g.rows_per_block = cbn_max_pd(CBN_MIN_ROWS_B, blk / cbn_max_pd(C, 1));
        g.nblocks = (outer + g.rows_per_block - 1) / g.rows_per_block;
        /* whole rows per task (sequential reads); chunk only very wide rows, to bound the
         * per-thread accumulators (3 doubles per column) to L2 */
        g.col_width = cbn_max_pd(1, cbn_min_pd(C, CBN_MAX_COLUMNS)); /* >= 1: C may be 0 */
        g.ncol_chunks = (C + g.col_width - 1) / g.col_width;
    }
    g.nseg = cbn_max_pd(1, cbn_min_pd(CBN_MAX_SEGMENTS, g.nblocks));
    return g;
}

#endif /* CBN_GEOMETRY_H */
