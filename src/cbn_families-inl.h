/* cbn_families-inl.h: every kernel family for the element type that cbn_kernels.h has just
 * defined (TS, T, SFX and the vector macros), which it undefines at the end; no include guard. */
#if CBN_HALF
#include "cbn_half-inl.h"    /* the loads and stores of a 16-bit format */
#endif
#include "cbn_epilogue-inl.h" /* the activations */
#include "cbn_reduce-inl.h"  /* channel-major run reductions */
#include "cbn_rows-inl.h"    /* channels-last row loops */
#include "cbn_tiles-inl.h"   /* channels-last register tiles */
#include "cbn_stream-inl.h"  /* streaming-store passes */
#include "cbn_runs-inl.h"    /* channel-major runs, up and down */
#include "cbn_math-inl.h"    /* exp and the normal CDF on vectors */
#include "cbn_post-inl.h"    /* the post-operation stage (residual, any activation) */
#include "cbn_masked-inl.h"  /* masked and weighted statistics */
#if CBN_HALF
#include "cbn_partials-inl.h" /* the two-level statistics */
#endif
#undef T
#undef TS
#undef CBN_LD
#undef CBN_ST
#undef CBN_HALF
#undef CBN_VWIDEN
#undef CBN_VNARROW
#undef CBN_VWIDEN2
#undef CBN_VNARROW2
#undef CBN_COEF2
#undef CBN_W8
#undef CBN_W4
#undef CBN_TLOAD
#undef SFX
#undef CBN_TV
#undef CBN_TVI
#undef CBN_TVL
#undef CBN_NTV
#undef CBN_NTI
#undef CBN_NT_STORE
