/* cbn_kernels.h: every C kernel of one SIMD level, for float and double.
 *
 * The headers without "-inl" hold what is independent of the element type (vector types,
 * helpers, tuning of each kernel family); each "-inl.h" file holds one kernel family written
 * once for an element type T, and is included here once per type with
 *   T          the element type,
 *   SFX(name)  name_f32 or name_f64 (the functions' names: grep "SFX(cbn_col_sum_dot)" finds
 *              the definition of cbn_col_sum_dot_f32 and _f64),
 *   CBN_TV, CBN_TVI, CBN_TVL   the native vector of T, its integer twin and its lanes,
 *   CBN_NTV, CBN_NTI, CBN_NT_STORE   the streaming-store vector of T, its integer twin, and
 *              its streaming store (cbn_stream.h).
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

#define T float
#define SFX(name) name##_f32
#define CBN_TV cbn_vf
#define CBN_TVI cbn_vi
#define CBN_TVL (CBN_VB / 4)
#define CBN_NTV cbn_ntf
#define CBN_NTI cbn_nti
#define CBN_NT_STORE CBN_NT_STORE_F32
#include "cbn_families-inl.h"

#define T double
#define SFX(name) name##_f64
#define CBN_TV cbn_vd
#define CBN_TVI cbn_vl
#define CBN_TVL (CBN_VB / 8)
#define CBN_NTV cbn_ntd
#define CBN_NTI cbn_ntl
#define CBN_NT_STORE CBN_NT_STORE_F64
#include "cbn_families-inl.h"

#endif /* CBN_KERNELS_H */
