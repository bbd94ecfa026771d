/* cbn_kernels.h: every C kernel of one SIMD level, for float, double, and the 16-bit formats.
 *
 * The headers without "-inl" hold what is independent of the element type (vector types,
 * helpers, tuning of each kernel family); each "-inl.h" file holds one kernel family written
 * once for an element type, and is included here once per type with
 *   TS         the element type of the data in memory (x, y, dy, dx, the residual),
 *   T          the arithmetic type: the type of the coefficients and of the vectors the data is
 *              computed on -- TS itself for float and double; float for the 16-bit formats of
 *              cbn_half.h, whose loads widen and stores narrow in registers,
 *   CBN_LD(v), CBN_ST(v)   an element of TS as T, and back (the identity for float and double),
 *   CBN_HALF   1 for the 16-bit formats (a few forms differ: cbn_half-inl.h),
 *   SFX(name)  name_f32, name_f64, name_f16 or name_bf16 (the functions' names: grep
 *              "SFX(cbn_col_sum_dot)" finds the definition of cbn_col_sum_dot_f32 and the rest),
 *   CBN_TV, CBN_TVI, CBN_TVL   the native vector of T, its integer twin and its lanes,
 *   CBN_TLOAD  the load of a native vector of coefficients (T),
 *   CBN_NTV, CBN_NTI, CBN_NT_STORE   the streaming-store vector of T, its integer twin, and
 *              its streaming store (cbn_stream.h; float and double only: the 16-bit formats
 *              never stream).
 * The whole file is compiled once per SIMD level (meson.build), as part of _kernels.pyx.
 */
#ifndef CBN_KERNELS_H
#define CBN_KERNELS_H

#include "cbn_simd.h"    /* vectors, 8-lane groups, work buffers */
#include "cbn_tiles.h"   /* register-tile geometry */
#include "cbn_stream.h"  /* streaming-store vectors and fences */
#include "cbn_reverse.h" /* descending loop shape */
#include "cbn_epilogue.h" /* the activations */
#include "cbn_post.h"     /* the post-operation stage */
#include "cbn_half.h"     /* the 16-bit storage formats */
#include "cbn_weights.h"  /* masks and weights of the masked statistics */
#include "cbn_partials.h" /* the two-level statistics */

#define T float
#define TS float
#define CBN_LD(v) (v)
#define CBN_ST(v) (v)
#define CBN_HALF 0
#define SFX(name) name##_f32
#define CBN_TV cbn_vf
#define CBN_TVI cbn_vi
#define CBN_TVL (CBN_VB / 4)
#define CBN_TLOAD cbn_vload_f32
#define CBN_NTV cbn_ntf
#define CBN_NTI cbn_nti
#define CBN_NT_STORE CBN_NT_STORE_F32
#include "cbn_families-inl.h"

#define T double
#define TS double
#define CBN_LD(v) (v)
#define CBN_ST(v) (v)
#define CBN_HALF 0
#define SFX(name) name##_f64
#define CBN_TV cbn_vd
#define CBN_TVI cbn_vl
#define CBN_TVL (CBN_VB / 8)
#define CBN_TLOAD cbn_vload_f64
#define CBN_NTV cbn_ntd
#define CBN_NTI cbn_ntl
#define CBN_NT_STORE CBN_NT_STORE_F64
#include "cbn_families-inl.h"

/* the 16-bit formats: one kernel path, the format a parameter (its conversions) */
#define T float
#define TS cbn_f16
#define CBN_LD(v) cbn_f16_to_f32(v)
#define CBN_ST(v) cbn_f32_to_f16(v)
#define CBN_HALF 1
#define CBN_VWIDEN cbn_vwiden_f16
#define CBN_VNARROW cbn_vnarrow_f16
#define CBN_VWIDEN2 cbn_vwiden2_f16
#define CBN_VNARROW2 cbn_vnarrow2_f16
#define CBN_COEF2 cbn_vcoef2_f16
#define CBN_W8 cbn_w8_f16
#define CBN_W4 cbn_w4_f16
#define SFX(name) name##_f16
#define CBN_TV cbn_vf
#define CBN_TVI cbn_vi
#define CBN_TVL (CBN_VB / 4)
#define CBN_TLOAD cbn_vload_f32
#include "cbn_families-inl.h"

#define T float
#define TS cbn_bf16
#define CBN_LD(v) cbn_bf16_to_f32(v)
#define CBN_ST(v) cbn_f32_to_bf16(v)
#define CBN_HALF 1
#define CBN_VWIDEN cbn_vwiden_bf16
#define CBN_VNARROW cbn_vnarrow_bf16
#define CBN_VWIDEN2 cbn_vwiden2_bf16
#define CBN_VNARROW2 cbn_vnarrow2_bf16
#define CBN_COEF2 cbn_vcoef2_bf16
#define CBN_W8 cbn_w8_bf16
#define CBN_W4 cbn_w4_bf16
#define SFX(name) name##_bf16
#define CBN_TV cbn_vf
#define CBN_TVI cbn_vi
#define CBN_TVL (CBN_VB / 4)
#define CBN_TLOAD cbn_vload_f32
#include "cbn_families-inl.h"

#endif /* CBN_KERNELS_H */
