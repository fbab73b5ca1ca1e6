/*
 * tile_types_impl.h -- the arrays and the selection of one tile, for the
 * tile type of the including file (TL_T, TL_V, TL_VM, TL_VL, TL_SFX: see
 * loss_impl.h), which includes it once per type; loss.c's eight-lane
 * float64 kernels include it too.
 */
/* The arrays of one tile: lane l's rows start at l times the row length. */
typedef struct {
    const TL_T *u, *x0, *ru, *rs, *tgt;
    TL_T *gu, *gx;
} TL_SFX(rl_data);

/* The arrays of the tile whose lane 0 is row b0 of a. */
static inline TL_SFX(rl_data) TL_SFX(rl_rows)(const TL_SFX(rl_data) *a, ptrdiff_t b0,
                                              ptrdiff_t su, ptrdiff_t ss, ptrdiff_t n)
{
    TL_SFX(rl_data) p = {
        a->u + b0 * su, a->x0 + b0 * n, a->ru != NULL ? a->ru + b0 * su : NULL,
        a->rs != NULL ? a->rs + b0 * ss : NULL, a->tgt != NULL ? a->tgt + b0 * n : NULL,
        a->gu != NULL ? a->gu + b0 * su : NULL, a->gx != NULL ? a->gx + b0 * n : NULL};
    return p;
}

/* Valid steps and weights of the lanes of one tile, one vector per step. */
typedef struct {
    TL_VM *vc;          /* steps: control step valid (all ones) or not (0) */
    TL_VM *vs;          /* steps + 1: state k scored by the trajectory term */
    TL_VM *fin;         /* one: index of the final valid state, -1 for an empty lane */
    double *wc, *ws;    /* the weights of those steps: step k of lane l at [k TL_VL + l] */
    TL_V *vs_w, *gs_w;  /* (steps + 1) x n: state value weights ws_k s_i, and times st */
    TL_V *vc_w, *gc_w;  /* steps x m: control value weights wc_k f_j, and times sc */
    ptrdiff_t K[TL_VL]; /* the final valid state of each lane (0 when empty) */
    ptrdiff_t Kmax;
    int ragged;      /* do non-empty lanes end at different states? */
    int short_lanes; /* does some lane (empty ones too) end before Kmax? */
} TL_SFX(tile_sel);

/* A tile selection over scratch: 2 T + 2 masks at v (vc, vs, fin), the
 * per-step weights at w (2 T + 1 rows of TL_VL; NULL where only the tables
 * are read) and 2 ((T + 1) n + T m) weight-table vectors at tab. */
static inline TL_SFX(tile_sel) TL_SFX(tile_sel_at)(TL_VM *v, double *w, TL_V *tab, ptrdiff_t T,
                                                   ptrdiff_t n, ptrdiff_t m)
{
    const ptrdiff_t ns = (T + 1) * n, nc = T * m;
    TL_SFX(tile_sel) ts = {v, v + T, v + 2 * T + 1, w, w != NULL ? w + T * TL_VL : NULL,
                           tab, tab + ns, tab + 2 * ns, tab + 2 * ns + nc,
                           {0}, 0, 0, 0};
    return ts;
}
