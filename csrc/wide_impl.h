/*
 * wide_impl.h -- the 512-bit fast kernels of one tile type (loss.c, which
 * includes it once for eight float64 and once for sixteen float32 lanes,
 * under AVX-512): TL_T, TL_V, TL_VM, TL_VL and TL_SFX name the wide type,
 * TL_NARROW the 256-bit one whose tile selection and arrays they are given,
 * TL_HALF (optional) the row length below which tile_impl.h moves rows by
 * halves; all of them undefined at the end.
 */
#include "tile_types_impl.h"
#include "tile_impl.h"

/* The selection of a wide tile of a uniform selection: each lane of the
 * 256-bit tile's, twice. at: the scratch of its vectors, which are there
 * already when `selected` (from an earlier chunk of the call). */
static void TL_SFX(wide_select)(const tl_rl_const *c, const TL_NARROW(tile_sel) *t4,
                                int selected, TL_SFX(tile_sel) *t8, double *at)
{
    const ptrdiff_t T = c->T, ns = (T + 1) * c->n, nc = T * c->m;
    const int half = TL_VL / 2;
    TL_VM *v = (TL_VM *)at;
    /* no per-step weights: only tile_select reads them */
    *t8 = TL_SFX(tile_sel_at)(v, NULL, (TL_V *)(v + 2 * T + 2), T, c->n, c->m);
    for (int l = 0; l < TL_VL; l++)
        t8->K[l] = t4->K[l % half];
    t8->Kmax = t4->Kmax;
    t8->ragged = t4->ragged;
    t8->short_lanes = t4->short_lanes;
    if (selected)
        return;
    for (ptrdiff_t k = 0; k < T; k++)
        t8->vc[k] = TL_SFX(tl_mjoin)(t4->vc[k], t4->vc[k]);
    for (ptrdiff_t k = 0; k <= T; k++)
        t8->vs[k] = TL_SFX(tl_mjoin)(t4->vs[k], t4->vs[k]);
    t8->fin[0] = TL_SFX(tl_mjoin)(t4->fin[0], t4->fin[0]);
    for (ptrdiff_t i = 0; i < ns; i++) {
        t8->vs_w[i] = TL_SFX(tl_vjoin)(t4->vs_w[i], t4->vs_w[i]);
        t8->gs_w[i] = TL_SFX(tl_vjoin)(t4->gs_w[i], t4->gs_w[i]);
    }
    for (ptrdiff_t i = 0; i < nc; i++) {
        t8->vc_w[i] = TL_SFX(tl_vjoin)(t4->vc_w[i], t4->vc_w[i]);
        t8->gc_w[i] = TL_SFX(tl_vjoin)(t4->gc_w[i], t4->gc_w[i]);
    }
}

/* `pairs` pairs of full tiles from row b0: ts4 and a4 are the 256-bit
 * kernels' tile selection and arrays; work holds two wide tiles' buffers
 * and then the tile selection's vectors (see wide_select). */
#define TL_WIDE_FN(NAME, N, M, TERMS)                                                         \
    static void NAME(const tl_rl_const *c, const void *ts4, int selected, const void *a4,     \
                     ptrdiff_t b0, ptrdiff_t pairs, tl_vd *sums, double *work)                \
    {                                                                                         \
        TL_V reg[TL_REG_VECTORS(N, M)];                                                       \
        TL_SFX(tile_sel) ts;                                                                  \
        TL_SFX(rl_data) a; /* the same members as the 256-bit rl_data */                      \
        memcpy(&a, a4, sizeof a);                                                             \
        TL_SFX(wide_select)(c, (const TL_NARROW(tile_sel) *)ts4, selected, &ts,              \
                            work + 2 * (sizeof(TL_V) / sizeof(double)) *                      \
                                       TL_TILE_VECTORS(c->T, N, M));                          \
        TL_SFX(rl_fast_run_body)(c, &ts, &a, b0, pairs, (TL_VS *)sums, (TL_V *)work, reg, N,  \
                                 M, TERMS);                                                   \
    }
#define TL_SMALL_SYSTEM(N, M)                                                                 \
    TL_WIDE_FN(TL_SFX(rl_wide_all_##N##_##M), N, M, TL_ALL_TERMS)                             \
    TL_WIDE_FN(TL_SFX(rl_wide_traj_##N##_##M), N, M, TL_TERM_TRAJECTORY)                      \
    TL_WIDE_FN(TL_SFX(rl_wide_term_##N##_##M), N, M, TL_TERM_TERMINAL)
TL_SMALL_SYSTEMS
#undef TL_SMALL_SYSTEM
#undef TL_WIDE_FN

/* The wide kernel for these terms of an (n, m) system, or NULL: none, a
 * small batch or one streamed from memory, the caller asked for 256-bit
 * tiles (spec->lanes), or the CPU has no AVX-512. */
static tl_wide_fn TL_NARROW(tl_wide_for)(const tl_rl_const *c, ptrdiff_t n, ptrdiff_t m,
                                         unsigned terms)
{
    if (c->spec->lanes == TL_LANES_F64 || c->B < TL_WIDE_MIN_BATCH || c->prefetch ||
        !(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
          __builtin_cpu_supports("avx512vl")))
        return NULL;
#define TL_SMALL_SYSTEM(N, M)                                                                 \
    if (n == N && m == M)                                                                     \
        return terms == TL_ALL_TERMS         ? TL_SFX(rl_wide_all_##N##_##M)                  \
               : terms == TL_TERM_TRAJECTORY ? TL_SFX(rl_wide_traj_##N##_##M)                 \
               : terms == TL_TERM_TERMINAL   ? TL_SFX(rl_wide_term_##N##_##M)                 \
                                             : NULL;
    TL_SMALL_SYSTEMS
#undef TL_SMALL_SYSTEM
    return NULL;
}

#undef TL_T
#undef TL_V
#undef TL_VM
#undef TL_VL
#undef TL_SFX
#undef TL_NARROW
#undef TL_HALF
