/* cbn_plan.h: how an op on a geometry is split into tasks -- a pure function of the geometry,
 * the element size, the thread count and the cache budget, so that it can be unit-tested
 * (cbn._core.plan) and so that the decomposition, hence every result, never depends on who
 * runs a task.  The kernels of every level (_kernels.pyx) execute a plan; the compile-once
 * module reports it.
 */
#ifndef CBN_PLAN_H
#define CBN_PLAN_H

#include "cbn_geometry.h"

/* The blocks of segment s are [cbn_seg_start(g, s), cbn_seg_start(g, s + 1)). */
static inline ptrdiff_t cbn_seg_start(const cbn_geometry *g, ptrdiff_t s) {
    return (s * g->nblocks) / g->nseg;
}
/* rows (channel-major: outer indices) of segment s when blocks are whole rows */
static inline ptrdiff_t cbn_segment_rows(const cbn_geometry *g, ptrdiff_t s) {
    return cbn_min_pd(cbn_seg_start(g, s + 1) * g->rows_per_block, g->outer)
         - cbn_min_pd(cbn_seg_start(g, s) * g->rows_per_block, g->outer);
}

/* How many threads the work of g can keep busy: channel-major runs, or the segments of a few
 * long channels (a single (1, 1, N) channel still splits); channels-last rows or channels. */
static inline ptrdiff_t cbn_tasks_of(const cbn_geometry *g) {
    if (g->inner > 1) return cbn_max_pd(g->outer * g->C, g->C * g->nseg);
    return cbn_max_pd(g->C, g->outer);
}

/* The thread count of a call: `requested` (0: max_threads), capped by the processors and by
 * the tasks; 1 for fewer than CBN_PARALLEL_MIN_ELEMS elements, and in a forked child after a
 * thread team ran (libgomp, cbn_runtime.h). */
static inline int cbn_threads_for(ptrdiff_t elems, int requested, ptrdiff_t tasks,
                                  int max_threads, int num_procs, int forked_child) {
    int nt = requested;
    if (elems < CBN_PARALLEL_MIN_ELEMS || forked_child) return 1;
    if (nt <= 0) nt = max_threads;
    if (nt > (num_procs > 1 ? num_procs : 1)) nt = num_procs > 1 ? num_procs : 1;
    if (tasks < nt) nt = (int)tasks;
    return nt > 1 ? nt : 1;
}

/* How a reduction (the statistics, the backward sums) is split into tasks. */
enum {
    CBN_RED_CM_ROWS = 0,     /* channel-major runs shorter than a block: (segment, channel
                                range) tasks reading rows in memory order, into partials */
    CBN_RED_CM_CHANNELS = 1, /* channel-major: one task per channel */
    CBN_RED_CM_SEGMENTS = 2, /* channel-major, few long channels: (channel, segment) tasks */
    CBN_RED_CL = 3,          /* channels-last: (segment, column chunk) tasks */
};
/* How an element-wise pass is split. */
enum {
    CBN_EW_CM_SHARES = 0, /* channel-major: one contiguous share of runs per thread */
    CBN_EW_CM_PIECES = 1, /* channel-major, fewer runs than threads: nt pieces per run */
    CBN_EW_CL_ROWS = 2,   /* channels-last: one block of rows per thread */
};

typedef struct {
    int nt;              /* threads */
    int fused;           /* forward/backward: each channel's reduction and pass in one task,
                            while the channel is cached */
    int reduce;          /* CBN_RED_*: how the reduction is split */
    ptrdiff_t ntasks_red; /* its tasks */
    ptrdiff_t nch, cw;   /* CBN_RED_CM_ROWS: channel ranges per segment, their width */
    int ew;              /* CBN_EW_*: how the element-wise pass is split */
    ptrdiff_t ntasks_ew; /* its tasks */
    ptrdiff_t rows_per_task; /* CBN_EW_CL_ROWS */
} cbn_plan;

/* CBN_RED_CM_ROWS: enough channel ranges for nt threads (channels are independent, so this
 * never changes a result). */
static inline ptrdiff_t cbn_channel_chunks(const cbn_geometry *g, int nt) {
    if (nt <= 1 || g->nseg >= 2 * nt) return 1;
    return cbn_max_pd(1, cbn_min_pd(g->C, (2 * nt + g->nseg - 1) / g->nseg));
}

/* Channels-last element-wise passes: one contiguous block of rows per thread (a multiple of
 * 4).  Element-wise work needs no balancing, and small tasks measured up to 1.5x slower with
 * narrow rows (NHWC with 64 channels: call and loop set-up per few rows). */
static inline ptrdiff_t cbn_rows_per_task(ptrdiff_t outer, int nt) {
    const ptrdiff_t r = (outer + nt - 1) / (nt > 1 ? nt : 1);
    return cbn_max_pd(4, (r + 3) / 4 * 4);
}

/* The plan of an op on g with nt threads: fused_bytes is the bytes a fused channel task keeps
 * cached (0: the op cannot fuse -- moments, inference, backward without dx), fuse_budget the
 * cache budget for it (half the L2).  Fusing pays only for long runs: with short runs the
 * channel-by-channel traversal costs more than the second read it saves. */
static inline cbn_plan cbn_plan_of(const cbn_geometry *g, int nt, ptrdiff_t fused_bytes,
                                   ptrdiff_t fuse_budget) {
    cbn_plan p;
    const ptrdiff_t C = g->C;
    p.nt = nt;
    p.fused = fused_bytes > 0 && g->pieces > 1 && C >= nt && fused_bytes <= fuse_budget;
    p.nch = 1;
    p.cw = C;
    if (g->inner > 1 && g->pieces == 1) {
        p.reduce = CBN_RED_CM_ROWS;
        p.nch = cbn_channel_chunks(g, nt);
        p.cw = (C + p.nch - 1) / p.nch;
        p.ntasks_red = g->nseg * p.nch;
    } else if (g->inner > 1 && (g->nseg == 1 || C >= nt)) {
        p.reduce = CBN_RED_CM_CHANNELS;
        p.ntasks_red = C;
    } else if (g->inner > 1) {
        p.reduce = CBN_RED_CM_SEGMENTS;
        p.ntasks_red = C * g->nseg;
    } else {
        p.reduce = CBN_RED_CL;
        p.ntasks_red = g->nseg * g->ncol_chunks;
    }
    p.rows_per_task = 0;
    if (g->inner > 1 && nt > g->outer * C) {
        p.ew = CBN_EW_CM_PIECES;
        p.ntasks_ew = g->outer * C * nt;
    } else if (g->inner > 1) {
        p.ew = CBN_EW_CM_SHARES;
        p.ntasks_ew = nt;
    } else {
        p.ew = CBN_EW_CL_ROWS;
        p.rows_per_task = cbn_rows_per_task(g->outer, nt);
        p.ntasks_ew = (g->outer + p.rows_per_task - 1) / p.rows_per_task;
    }
    return p;
}

#endif /* CBN_PLAN_H */
