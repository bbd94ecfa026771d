/* cbn_weights.h: the per-element weights of masked and weighted statistics (cbn_masked-inl.h).
 *
 * A boolean mask (one byte per weight, 0 or 1) or non-negative float32/float64 weights, viewed
 * like the data as (outer, C, inner): the weight of element (o, c, i) is at index
 * o * row + c * chan + i.  A per-position mask, shared by the channels, has chan = 0 and
 * row = inner; a per-element one chan = inner and row = C * inner.  The Python layer checks
 * the values (finite, >= 0) and lays the array out so; the kernels only read it.
 */
#ifndef CBN_WEIGHTS_H
#define CBN_WEIGHTS_H

#include <stddef.h>

enum { CBN_W_MASK = 0, CBN_W_F32 = 1, CBN_W_F64 = 2 };

typedef struct {
    const void *p;
    int kind;       /* CBN_W_MASK, CBN_W_F32 or CBN_W_F64 */
    ptrdiff_t row;  /* index step of o */
    ptrdiff_t chan; /* index step of c: 0 for a per-position mask */
} cbn_weights;

/* the weight at index i, as float64 (exact) */
static inline double cbn_w_at(const cbn_weights *w, ptrdiff_t i) {
    if (w->kind == CBN_W_MASK) return (double)((const unsigned char *)w->p)[i];
    if (w->kind == CBN_W_F32) return (double)((const float *)w->p)[i];
    return ((const double *)w->p)[i];
}

/* The first index in [i, i + n) whose weight is larger than *best, updating *best and *at
 * (left as they were if none is).  A mask stops at its first selected element. */
static inline void cbn_w_first_max(const cbn_weights *w, ptrdiff_t i, ptrdiff_t n,
                                   double *best, ptrdiff_t *at) {
    if (w->kind == CBN_W_MASK) {
        const unsigned char *m = (const unsigned char *)w->p + i;
        if (*best >= 1.0) return;
        for (ptrdiff_t j = 0; j < n; j++)
            if (m[j]) { *best = 1.0; *at = i + j; return; }
        return;
    }
    for (ptrdiff_t j = 0; j < n; j++) {
        double v = cbn_w_at(w, i + j);
        if (v > *best) { *best = v; *at = i + j; }
    }
}

#endif /* CBN_WEIGHTS_H */
