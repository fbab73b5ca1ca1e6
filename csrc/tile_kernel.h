/*
 * tile_kernel.h -- the tile kernel of the rollout losses for one dtype,
 * included by tile.c twice: TL_T double (TL_I int64_t) and float (int32_t),
 * TL_F(name) giving each name the dtype's suffix. What it computes is
 * engine.h's; how:
 *
 * A tile is TL_TILE consecutive sequences, lane l being sequence b0 + l. One
 * value of the tile (an element of x, of u, of a derivative) is TL_TILE
 * numbers of TL_T -- float32 computes in float, float64 in double -- held as
 * TL_P vectors V of the target's register width (TL_L lanes each): two
 * 256-bit vectors for float64 on AVX2, one for float32; four and two
 * 128-bit ones on the baseline. (A single 8-lane vector type wider than the
 * registers is not split into registers by GCC: it lives in memory.) Tile
 * value e of a buffer is buf[e TL_P .. e TL_P + TL_P - 1].
 *
 * Per step the forward pass
 *   - gathers the tile's controls u_k (and references) into m values,
 *   - scores u_k (control term) and stores its derivative Gc_k,
 *   - computes x_{k+1} = c_k + B_k u_k + A_k x_k (mv below),
 *   - scores x_{k+1} (trajectory term) and stores its derivative G_{k+1};
 * the terminal term adds to G at each lane's final state. The backward pass
 * is then only
 *   grad u_k = Gc_k + B_k^T lam_{k+1},   lam_k = G_k + A_k^T lam_{k+1},
 * from lam_K = G_K down to grad x0 = lam_0. One register-blocked
 * matrix-vector kernel (mv) serves both passes, [A | B] forward and their
 * transposes backward. Matrices shared by the batch are broadcast from
 * scalars; per-sample ones are gathered into lane layout once per tile (per
 * step when they vary in time).
 *
 * Sequences end at different steps (lengths, mask): each lane's valid
 * steps are masks, and everything a lane must not see -- steps it does not
 * score, states after its last one -- is removed by bitwise selects, never
 * multiplied by 0 (0 * NaN is NaN): padding of any value never changes a
 * result, and lam stays exactly 0 after a lane's last state. A uniform
 * selection has masks of all ones: one path serves every selection.
 *
 * One version is the common case of training on a small system written
 * on its own ("the uniform version" below): no lengths or mask, a system
 * shared by the batch and fixed in time, the squared error, n, m <= 2, T >=
 * 4. With nothing to select, it reads the rows four steps at a time,
 * transposes them in registers and uses them there, two vectors of
 * sequences side by side; at the double integrator's B = 1024 it is about
 * two and a half times as fast as the general versions. The general
 * versions compute the same numbers (test_tile.c checks both against the
 * reference kernel).
 */

#define V TL_F(vec)
#define M TL_F(mask)
#define TL_L (TL_TILE_VREG_BYTES / (int)sizeof(TL_T)) /* lanes of a vector */
#define TL_P (TL_TILE / TL_L)                          /* vectors of a tile value */
#define TL_Q ((int)(sizeof(double) / sizeof(TL_T)))    /* double vectors of a vector */
typedef TL_T V __attribute__((vector_size(TL_TILE_VREG_BYTES)));
typedef TL_I M __attribute__((vector_size(TL_TILE_VREG_BYTES)));

/* double vectors of a tile's sums */
#define TL_SV ((int)(TL_TILE * sizeof(double) / TL_TILE_VREG_BYTES))

/* Rows of one block of mv: its accumulators fill half the vector registers. */
#define TL_ROWS (8 / TL_P)

TL_VRHO_DEFINE(TL_F(vrho), TL_T, V, M)

/* x in every lane. (Not for hot loops: 0 + x is not x for x = -0, so it
 * costs an add; there a vector times a scalar broadcasts it alone.) */
TL_INLINE V TL_F(splat)(TL_T x)
{
    const V zero = {0};
    return zero + x;
}

TL_INLINE M TL_F(splat_i)(ptrdiff_t x)
{
    const M zero = {0};
    return zero + (TL_I)x;
}

/* The gradient check of every kernel: chk (a mask vector) or'ed with the
 * bits of g - g, all 0 while g is finite and a NaN's when it is NaN or inf
 * -- a bitwise or on no multiply's chain. */
#define TL_CHK(chk, g) ((chk) |= (M)((g) - (g)))

/* mask ? a : b, lane by lane, and mask ? a : 0. */
#define TL_SEL(mask, a, b) ((V)(((M)(a) & (mask)) | ((M)(b) & ~(mask))))
#define TL_KEEP(mask, a) ((V)((M)(a) & (mask)))

/* Lane l of tile value e of a buffer of tile values (element e TL_TILE + l
 * of it as an array), written and read as a scalar: memcpy, as a store into
 * a vector's lane may become a load, an insert and a store of the vector. */
TL_INLINE void TL_F(put)(V *buf, ptrdiff_t e, int l, TL_T x)
{
    memcpy((char *)buf + (size_t)(e * TL_TILE + l) * sizeof x, &x, sizeof x);
}

TL_INLINE void TL_F(put_i)(M *buf, ptrdiff_t e, int l, TL_I x)
{
    memcpy((char *)buf + (size_t)(e * TL_TILE + l) * sizeof x, &x, sizeof x);
}

TL_INLINE TL_T TL_F(get)(const V *buf, ptrdiff_t e, int l)
{
    TL_T x;
    memcpy(&x, (const char *)buf + (size_t)(e * TL_TILE + l) * sizeof x, sizeof x);
    return x;
}

/* Vector h of a tile value from p[0], p[stride], ..., p[7 stride]; and back. */
TL_INLINE V TL_F(gather)(const TL_T *p, ptrdiff_t stride, int h)
{
    TL_T a[TL_L];
    for (int l = 0; l < TL_L; l++)
        a[l] = p[(h * TL_L + l) * stride];
    V v;
    memcpy(&v, a, sizeof v);
    return v;
}

TL_INLINE void TL_F(scatter)(const V *v, TL_T *p, ptrdiff_t stride)
{
    TL_UNROLL for (int h = 0; h < TL_P; h++)
        for (int l = 0; l < TL_L; l++)
            p[(h * TL_L + l) * stride] = v[h][l];
}

/* sum[h TL_Q ...] += vector h of a tile value, lane by lane, in double:
 * float32's halves widened (shuffles, which stay in registers). */
#define TL_LN (TL_TILE_VREG_BYTES / TL_TB) /* TL_L, for the preprocessor */
TL_INLINE void TL_F(acc)(tl_tile_dv *sum, int h, const V *v)
{
#if TL_TB == 8
    sum[h] += *v;
#elif TL_LN == 8
    sum[2 * h] += __builtin_convertvector(__builtin_shufflevector(*v, *v, 0, 1, 2, 3), tl_tile_dv);
    sum[2 * h + 1] +=
        __builtin_convertvector(__builtin_shufflevector(*v, *v, 4, 5, 6, 7), tl_tile_dv);
#elif TL_LN == 4
    sum[2 * h] += __builtin_convertvector(__builtin_shufflevector(*v, *v, 0, 1), tl_tile_dv);
    sum[2 * h + 1] += __builtin_convertvector(__builtin_shufflevector(*v, *v, 2, 3), tl_tile_dv);
#else
#error "a float32 vector of 4 or 8 lanes"
#endif
}

/* ---- rows in and out of lane layout ------------------------------------- *
 * A tile's rows of an input (its controls, say: T m contiguous elements a
 * sequence) enter lane layout once per tile, by transposing TL_L x TL_L
 * blocks in registers: log2(TL_L) rounds of two-vector shuffles, round s
 * swapping bit s of each element's row and column index. The gradients
 * leave the same way. */
#define TL_SWAP_LO(c, s) (((c) & (s)) ? TL_LN + ((c) ^ (s)) : (c))
#define TL_SWAP_HI(c, s) (((c) & (s)) ? TL_LN + (c) : ((c) ^ (s)))
#if TL_LN == 2
#define TL_SHUF(a, b, F, s) __builtin_shufflevector(a, b, F(0, s), F(1, s))
#elif TL_LN == 4
#define TL_SHUF(a, b, F, s) __builtin_shufflevector(a, b, F(0, s), F(1, s), F(2, s), F(3, s))
#elif TL_LN == 8
#define TL_SHUF(a, b, F, s)                                                                  \
    __builtin_shufflevector(a, b, F(0, s), F(1, s), F(2, s), F(3, s), F(4, s), F(5, s),      \
                            F(6, s), F(7, s))
#else
#error "a vector of 2, 4 or 8 lanes"
#endif
#define TL_ROUND(r, s)                                                                       \
    TL_UNROLL for (int i_ = 0; i_ < TL_L; i_++)                                                        \
        if (!(i_ & (s))) {                                                     \
            const V a_ = r[i_], b_ = r[i_ ^ (s)];                                            \
            r[i_] = TL_SHUF(a_, b_, TL_SWAP_LO, s);                                          \
            r[i_ ^ (s)] = TL_SHUF(a_, b_, TL_SWAP_HI, s);                                    \
        }

/* r[i][j] = r[j][i]. */
TL_INLINE void TL_F(transpose)(V r[TL_L])
{
    TL_ROUND(r, 1)
#if TL_LN >= 4
    TL_ROUND(r, 2)
#endif
#if TL_LN >= 8
    TL_ROUND(r, 4)
#endif
}

/* Tile values e = 0 .. len - 1 of dst from the tile's rows p + l stride:
 * lane l of dst[e] is p[l stride + e]. Blocks of TL_L elements, the last
 * one overlapping the one before where len is not a multiple of it. */
static void TL_F(rows_in)(const TL_T *p, ptrdiff_t stride, ptrdiff_t len, V *dst)
{
    if (len < TL_L) {
        for (ptrdiff_t e = 0; e < len; e++)
            for (int l = 0; l < TL_TILE; l++)
                TL_F(put)(dst, e, l, p[l * stride + e]);
        return;
    }
    for (ptrdiff_t e0 = 0; e0 < len; e0 += TL_L) {
        if (e0 > len - TL_L)
            e0 = len - TL_L;
        TL_UNROLL for (int h = 0; h < TL_P; h++) {
            V r[TL_L];
            TL_UNROLL for (int l = 0; l < TL_L; l++)
                memcpy(&r[l], p + (h * TL_L + l) * stride + e0, sizeof r[l]);
            TL_F(transpose)(r);
            TL_UNROLL for (int c = 0; c < TL_L; c++)
                dst[(e0 + c) * TL_P + h] = r[c];
        }
    }
}

/* The inverse of rows_in: p[l stride + e] = lane l of src[e]. */
static void TL_F(rows_out)(const V *src, ptrdiff_t len, TL_T *p, ptrdiff_t stride)
{
    if (len < TL_L) {
        for (ptrdiff_t e = 0; e < len; e++)
            for (int l = 0; l < TL_TILE; l++)
                p[l * stride + e] = TL_F(get)(src, e, l);
        return;
    }
    for (ptrdiff_t e0 = 0; e0 < len; e0 += TL_L) {
        if (e0 > len - TL_L)
            e0 = len - TL_L;
        TL_UNROLL for (int h = 0; h < TL_P; h++) {
            V r[TL_L];
            TL_UNROLL for (int c = 0; c < TL_L; c++)
                r[c] = src[(e0 + c) * TL_P + h];
            TL_F(transpose)(r);
            TL_UNROLL for (int l = 0; l < TL_L; l++)
                memcpy(p + (h * TL_L + l) * stride + e0, &r[l], sizeof r[l]);
        }
    }
}

/* ---- the call, its tiles and their selection --------------------------- */

/* The valid steps and weights of the lanes of a tile, a tile value a step. */
typedef struct {
    M *vc;                 /* T: control step k is valid (all ones) or not (0) */
    M *vs;                 /* T + 1: state k is scored by the trajectory term */
    V *wcv, *wcg;          /* T: control weights w_k, and scale[0] w_k */
    V *wsv, *wsg;          /* T + 1: state weights, and scale[1] times them */
    ptrdiff_t K[TL_TILE];  /* each lane's final valid state (0: no valid step) */
    M fin[TL_P];           /* the same as a tile value */
    ptrdiff_t Kmax;        /* the largest */
    int ragged;            /* do lanes end at different states? */
} TL_F(sel_t);

/* The tile being computed: its selection, derivatives, registers and matrices. */
typedef struct {
    ptrdiff_t b0;
    TL_F(sel_t) sel;
    V *G, *Gc;             /* (T+1) n and T m tile values */
    V *x, *xn, *xf, *lam, *ln, *cv; /* n each */
    V *gu;                 /* m */
    V *Av, *Bv;            /* A, B in lane layout (per-sample systems) */
    V *U, *RU, *RS;        /* the tile's controls, reference controls, reference states */
    TL_T *As, *Bs;         /* or as scalars (shared systems) */
    V *room;               /* after the rest: the uniform version's buffers */
} TL_F(slot_t);

/* One matrix a matrix-vector product reads: element (i, j) at i rs + j cs
 * of the lane table v (vec) or the scalars s, for j < cols. (The vector it
 * multiplies is an argument of its own: the address of an array the
 * compiler is to keep in registers must not be stored in a struct.) */
typedef struct {
    const V *v;
    const TL_T *s;
    ptrdiff_t rs, cs, cols;
} TL_F(mat_t);

/* The scalar weights of a uniform selection, for the uniform version
 * (uniform_weights). */
typedef struct {
    TL_T *cwv, *cwg, *swv, *swg;
    TL_T *one; /* [0] control, [1] states: 1 when every weight scored is the first */
} TL_F(uw_t);

typedef struct {
    const tl_loss_ctx *c;
    ptrdiff_t T, n, m, su, ss;      /* su, ss: row lengths of controls and states */
    int ctl, traj, term, states;    /* the terms; states: some state is scored */
    int shift, vec;                 /* vec: A and B in lane layout */
    int a_tv, b_tv, c_tv;           /* does A, B, c vary in time? */
    tl_penalty pen;
    TL_T delta, sf;                 /* sf: scale[2] */
    const TL_T *u, *x0, *ru, *rs, *tgt;
    TL_T *gu, *gx;
    TL_T *sw, *fw;                  /* state and feature weights (ones when not given) */
    double *row;                    /* T + 2: one sequence's time weights */
    TL_F(uw_t) uw;                  /* the uniform version's weights */
    TL_F(slot_t) slot;
} TL_F(call_t);

/* Field f (len elements) of lanes b0 .. b0 + 7 at step k: into the lane
 * table vt, or (shared, scalars) into st. */
static void TL_F(field_at)(const tl_field *f, ptrdiff_t len, ptrdiff_t b0, ptrdiff_t k,
                           V *vt, TL_T *st)
{
    const double *p = f->data + b0 * f->batch_stride + k * f->step_stride;
    if (vt == NULL) {
        for (ptrdiff_t i = 0; i < len; i++)
            st[i] = (TL_T)p[i];
        return;
    }
    for (ptrdiff_t i = 0; i < len; i++)
        for (int l = 0; l < TL_TILE; l++)
            TL_F(put)(vt, i, l, (TL_T)p[l * f->batch_stride + i]);
}

/* The slot's matrices at step k, those of `which` (bits 1 A, 2 B, 4 c). */
static void TL_F(mats_at)(const TL_F(call_t) *q, TL_F(slot_t) *s, ptrdiff_t k, unsigned which)
{
    const tl_dynamics *d = q->c->dyn;
    const ptrdiff_t n = q->n, m = q->m;
    if (which & 1)
        TL_F(field_at)(&d->A, n * n, s->b0, k, q->vec ? s->Av : NULL, s->As);
    if (which & 2)
        TL_F(field_at)(&d->B, n * m, s->b0, k, q->vec ? s->Bv : NULL, s->Bs);
    if ((which & 4) && d->c.data != NULL)
        TL_F(field_at)(&d->c, n, s->b0, k, s->cv, NULL);
}

/* The bits (as mats_at) of the fields fixed in time that are per sample
 * (per_sample) or shared by the batch. */
static unsigned TL_F(fixed_fields)(const tl_dynamics *d, int per_sample)
{
    const tl_field *f[3] = {&d->A, &d->B, &d->c};
    unsigned bits = 0;
    for (int i = 0; i < 3; i++)
        if (f[i]->step_stride == 0 && (f[i]->batch_stride != 0) == per_sample)
            bits |= 1u << i;
    return bits;
}

/* w (sequence b's control-step weights, T + 2 room) becomes its state
 * weights: with the shift, tl_sel_weights' own (state 0 scored); else
 * state k's weight is step k - 1's and state 0's is 0. */
static void TL_F(state_weights)(const TL_F(call_t) *q, ptrdiff_t b, double *w)
{
    const tl_loss_ctx *c = q->c;
    if (q->shift) {
        tl_sel_weights(&c->spec->sel, b, 1, c->powers, w);
    } else {
        memmove(w + 1, w, (size_t)q->T * sizeof(double));
        w[0] = 0.0;
    }
}

/* Lane l of the selection: sequence b's valid steps and weights. */
static void TL_F(select_lane)(const TL_F(call_t) *q, TL_F(sel_t) *sl, int l, ptrdiff_t b)
{
    const tl_loss_ctx *c = q->c;
    const tl_selection *sel = &c->spec->sel;
    const ptrdiff_t T = q->T;
    const tl_seq_span span = tl_sel_span(sel, b);
    double *w = q->row;
    sl->K[l] = span.count > 0 ? span.last + 1 : 0;
    if (span.count == 0) {
        for (ptrdiff_t k = 0; k <= T; k++) {
            if (k < T) {
                TL_F(put_i)(sl->vc, k, l, 0);
                TL_F(put)(sl->wcv, k, l, 0);
                TL_F(put)(sl->wcg, k, l, 0);
            }
            TL_F(put_i)(sl->vs, k, l, 0);
            TL_F(put)(sl->wsv, k, l, 0);
            TL_F(put)(sl->wsg, k, l, 0);
        }
        return;
    }
    tl_sel_weights(sel, b, 0, c->powers, w);
    /* state k >= 1 is scored with control step k - 1; state 0 only with the shift */
    TL_F(put_i)(sl->vs, 0, l, q->shift ? -1 : 0);
    for (ptrdiff_t k = 0; k < T; k++) {
        const TL_I valid = tl_sel_valid(sel, b, k) ? -1 : 0;
        TL_F(put_i)(sl->vc, k, l, valid);
        TL_F(put_i)(sl->vs, k + 1, l, valid);
        TL_F(put)(sl->wcv, k, l, (TL_T)w[k]);
        TL_F(put)(sl->wcg, k, l, (TL_T)(c->scale[0] * w[k]));
    }
    TL_F(state_weights)(q, b, w);
    for (ptrdiff_t k = 0; k <= T; k++) {
        TL_F(put)(sl->wsv, k, l, (TL_T)w[k]);
        TL_F(put)(sl->wsg, k, l, (TL_T)(c->scale[1] * w[k]));
    }
}

/* The selection of the tile from b0; b0 < 0: of a uniform selection, every
 * lane sequence 0's. */
static void TL_F(select_tile)(const TL_F(call_t) *q, TL_F(sel_t) *sl, ptrdiff_t b0)
{
    if (b0 < 0) { /* lane 0 computed, then copied to the others */
        const ptrdiff_t T = q->T;
        TL_F(select_lane)(q, sl, 0, 0);
        void *const rows[6] = {sl->vc, sl->wcv, sl->wcg, sl->vs, sl->wsv, sl->wsg};
        for (int a = 0; a < 6; a++)
            for (ptrdiff_t k = 0; k < T + (a >= 3); k++) {
                char *e = (char *)rows[a] + (size_t)(k * TL_TILE) * sizeof(TL_T);
                for (int l = 1; l < TL_TILE; l++)
                    memcpy(e + (size_t)l * sizeof(TL_T), e, sizeof(TL_T));
            }
        for (int l = 1; l < TL_TILE; l++)
            sl->K[l] = sl->K[0];
    }
    for (int l = b0 < 0 ? TL_TILE : 0; l < TL_TILE; l++)
        TL_F(select_lane)(q, sl, l, b0 + l);
    sl->Kmax = 0;
    for (int l = 0; l < TL_TILE; l++) {
        sl->Kmax = sl->K[l] > sl->Kmax ? sl->K[l] : sl->Kmax;
        TL_F(put_i)(sl->fin, 0, l, (TL_I)sl->K[l]);
    }
    sl->ragged = 0;
    for (int l = 0; l < TL_TILE; l++)
        sl->ragged |= sl->K[l] != sl->Kmax;
}

/* ---- the versions of the kernel ------------------------------------------- *
 * Bits of the constant `how` each version of run() is compiled with:
 *   TL_HOW_VEC  the matrices are lane tables (per-sample systems), else
 *               scalars broadcast where used;
 *   TL_HOW_MSE  the penalty is the squared error (else the compiler
 *               computes every penalty and selects);
 *   TL_HOW_ONE  the state and the control fit in TL_ONE tile values each
 *               (n, m <= TL_ONE: a quarter of the 16 vector registers for
 *               x, as many for its successor). Every loop over rows and columns
 *               is then bounded by TL_ONE at compile time as well as by the
 *               size read at run time: the compiler unrolls it whole, and x
 *               and lambda stay in registers from step to step instead of
 *               going through the tile's scratch. The sizes stay run-time
 *               sizes; one build serves every n, m <= TL_ONE. Systems fixed
 *               in time only: no call may stand in the steps' loop (every
 *               vector register is lost across a call), and a time-varying
 *               system's matrices are fetched by one at each step. */
#define TL_HOW_VEC 1u
#define TL_HOW_MSE 2u
#define TL_HOW_ONE 4u
#define TL_ONE (4 / TL_P > 0 ? 4 / TL_P : 1)
/* a loop bound: the size, and TL_ONE at compile time in the TL_HOW_ONE versions */
#define TL_DIM(how, len)                                                                     \
    (((how) & TL_HOW_ONE) ? TL_ONE : (len))
/* (the exit is a break, not a second condition: GCC ignores an unroll
 * annotation on a loop whose condition is a conjunction) */
#define TL_FOR(i, how, len)                                                                  \
    for (ptrdiff_t i = 0, i##_end = TL_DIM(how, len); i < i##_end; i++)                      \
        if (i >= (len))                                                                       \
            break;                                                                            \
        else

/* ---- the matrix-vector kernel ------------------------------------------ */

/* acc[r] += sum_j p(i0 + r, j) z[j] for r < R. */
TL_INLINE void TL_F(mv_add)(const int R, const unsigned how, ptrdiff_t i0, const TL_F(mat_t) *p,
                            const V *z, V acc[][TL_P])
{
    const ptrdiff_t cols = p->cols, rs = p->rs, cs = p->cs;
    if (z == NULL || cols == 0) /* no matrix (its pointers are NULL: no arithmetic on them) */
        return;
    if (how & TL_HOW_VEC) {
        const V *c = p->v + i0 * rs * TL_P;
        TL_FOR(j, how, cols)
            for (int r = 0; r < R; r++)
                TL_UNROLL for (int h = 0; h < TL_P; h++)
                    acc[r][h] += c[(r * rs + j * cs) * TL_P + h] * z[j * TL_P + h];
    } else { /* one broadcast of each scalar for the TL_P vectors */
        const TL_T *c = p->s + i0 * rs;
        TL_FOR(j, how, cols)
            for (int r = 0; r < R; r++) {
                const TL_T coef = c[r * rs + j * cs];
                TL_UNROLL for (int h = 0; h < TL_P; h++)
                    acc[r][h] += z[j * TL_P + h] * coef;
            }
    }
}

/* out[i] = init[i] + sum_j a(i, j) za[j] + sum_j b(i, j) zb[j] for the R
 * rows from i0 (tile values); where `live` is given, lanes outside it keep
 * init. */
TL_INLINE void TL_F(mv_rows)(const int R, const unsigned how, ptrdiff_t i0, const V *init,
                             const TL_F(mat_t) *a, const V *za, const TL_F(mat_t) *b,
                             const V *zb, const M *live, V *restrict out)
{
    V acc[8][TL_P];
    for (int r = 0; r < R; r++)
        TL_UNROLL for (int h = 0; h < TL_P; h++)
            acc[r][h] = init[(i0 + r) * TL_P + h];
    TL_F(mv_add)(R, how, i0, a, za, acc);
    TL_F(mv_add)(R, how, i0, b, zb, acc);
    for (int r = 0; r < R; r++)
        TL_UNROLL for (int h = 0; h < TL_P; h++) {
            const ptrdiff_t o = (i0 + r) * TL_P + h;
            out[o] = live != NULL ? TL_SEL(live[h], acc[r][h], init[o]) : acc[r][h];
        }
}

/* The `rows` rows of mv_rows from row 0: blocks of 8, 4, 2 and 1 rows;
 * a row at a time, unrolled, in the TL_HOW_ONE versions (x in registers). */
TL_INLINE void TL_F(mv)(const unsigned how, ptrdiff_t rows, const V *init, const TL_F(mat_t) *a,
                        const V *za, const TL_F(mat_t) *b, const V *zb, const M *live,
                        V *restrict out)
{
    if (how & TL_HOW_ONE) {
        TL_FOR(i, how, rows)
            TL_F(mv_rows)(1, how, i, init, a, za, b, zb, live, out);
        return;
    }
    ptrdiff_t i = 0;
    if (TL_ROWS >= 8)
        for (; i + 8 <= rows; i += 8)
            TL_F(mv_rows)(8, how, i, init, a, za, b, zb, live, out);
    if (TL_ROWS >= 4)
        for (; i + 4 <= rows; i += 4)
            TL_F(mv_rows)(4, how, i, init, a, za, b, zb, live, out);
    for (; i + 2 <= rows; i += 2)
        TL_F(mv_rows)(2, how, i, init, a, za, b, zb, live, out);
    if (i < rows)
        TL_F(mv_rows)(1, how, i, init, a, za, b, zb, live, out);
}

/* buf = 0, n tile values (a loop, not memset: no call where x is in registers) */
TL_INLINE void TL_F(zero)(ptrdiff_t n, V *buf, const unsigned how)
{
    TL_FOR(i, how, n)
        TL_UNROLL for (int h = 0; h < TL_P; h++)
            buf[i * TL_P + h] = TL_F(splat)(0);
}

/* ---- the forward pass ---------------------------------------------------- *
 * The tile's running values -- x, its successor xn, lambda and its
 * predecessor -- are arrays of n tile values that run() owns: the slot's
 * scratch, or in the TL_HOW_ONE versions arrays of its own that the
 * compiler keeps in registers. Each lane's final state xf stays in the
 * scratch. The sums go to run()'s own accumulators, in registers too. */

/* The trajectory term at the tile's state k (x): adds its value to sum and
 * stores its derivative G_k. */
TL_INLINE void TL_F(score_states)(const TL_F(call_t) *q, TL_F(slot_t) *s, ptrdiff_t k,
                                  const V *x, tl_tile_dv *sum, const unsigned how)
{
    const ptrdiff_t n = q->n;
    V *G = s->G + k * n * TL_P;
    if (!q->traj) {
        TL_F(zero)(n, G, how);
        return;
    }
    const tl_penalty pen = (how & TL_HOW_MSE) ? TL_PENALTY_MSE : q->pen;
    const TL_F(sel_t) *sl = &s->sel;
    const M *on = sl->vs + k * TL_P;
    const V *wv = sl->wsv + k * TL_P, *wg = sl->wsg + k * TL_P;
    const V *rs = s->RS + k * n * TL_P;
    TL_FOR(i, how, n)
        TL_UNROLL for (int h = 0; h < TL_P; h++) {
            const V r = x[i * TL_P + h] - rs[i * TL_P + h];
            V d;
            const V e = TL_F(vrho)(pen, q->delta, &r, &d);
            const V ve = TL_KEEP(on[h], wv[h] * (q->sw[i] * e));
            TL_F(acc)(sum, h, &ve);
            G[i * TL_P + h] = TL_KEEP(on[h], wg[h] * (q->sw[i] * d));
        }
}

/* x = xf = x0 and the terms at state 0. */
TL_INLINE void TL_F(forward_begin)(const TL_F(call_t) *q, TL_F(slot_t) *s, V *x, V *xf,
                                   tl_tile_dv *sum, const unsigned how)
{
    const ptrdiff_t n = q->n;
    if (!q->states)
        return;
    TL_FOR(i, how, n)
        TL_UNROLL for (int h = 0; h < TL_P; h++)
            x[i * TL_P + h] = xf[i * TL_P + h] = TL_F(gather)(q->x0 + s->b0 * n + i, n, h);
    if (q->shift) {
        TL_F(score_states)(q, s, 0, x, sum, how);
    } else { /* an unscored state 0: its reference is never read */
        TL_F(zero)(n, s->G, how);
    }
}

/* Control step k: its penalty, then xn = x_{k+1} from x = x_k and the
 * terms there. */
TL_INLINE void TL_F(forward_step)(const TL_F(call_t) *q, TL_F(slot_t) *s, ptrdiff_t k,
                                  const V *x, V *restrict xn, V *xf, tl_tile_dv sum[][TL_SV],
                                  const unsigned how)
{
    const ptrdiff_t n = q->n, m = q->m;
    const TL_F(sel_t) *sl = &s->sel;
    const V *uk = s->U + k * m * TL_P;
    V *Gc = s->Gc + k * m * TL_P;
    if (q->ctl) {
        const tl_penalty pen = (how & TL_HOW_MSE) ? TL_PENALTY_MSE : q->pen;
        const M *on = sl->vc + k * TL_P;
        const V *wv = sl->wcv + k * TL_P, *wg = sl->wcg + k * TL_P;
        const V *ru = s->RU + k * m * TL_P;
        TL_FOR(j, how, m)
            TL_UNROLL for (int h = 0; h < TL_P; h++) {
                const V r = uk[j * TL_P + h] - ru[j * TL_P + h];
                V d;
                const V e = TL_F(vrho)(pen, q->delta, &r, &d);
                const V ve = TL_KEEP(on[h], wv[h] * (q->fw[j] * e));
                TL_F(acc)(sum[0], h, &ve);
                Gc[j * TL_P + h] = TL_KEEP(on[h], wg[h] * (q->fw[j] * d));
            }
    } else {
        TL_F(zero)(m, Gc, how);
    }
    if (!q->states)
        return;
    if (!(how & TL_HOW_ONE) && (q->a_tv | q->b_tv | q->c_tv))
        TL_F(mats_at)(q, s, k, (unsigned)(q->a_tv | q->b_tv << 1 | q->c_tv << 2));
    /* the controls first: they are ready before x_k, so only A_k x_k stands
     * on the chain from step to step */
    const TL_F(mat_t) B = {s->Bv, s->Bs, m, 1, m}, A = {s->Av, s->As, n, 1, n};
    TL_F(mv)(how, n, s->cv, &B, uk, &A, x, NULL, xn);
    TL_F(score_states)(q, s, k + 1, xn, sum[1], how);
    if (q->term && sl->ragged) /* keep each lane's final state */
        TL_UNROLL for (int h = 0; h < TL_P; h++) {
            const M final = (M)(sl->fin[h] == TL_F(splat_i)(k + 1));
            TL_FOR(i, how, n)
                xf[i * TL_P + h] = TL_SEL(final, xn[i * TL_P + h], xf[i * TL_P + h]);
        }
}

/* The terminal term at each lane's final valid state x: adds to G there. */
TL_INLINE void TL_F(forward_end)(const TL_F(call_t) *q, TL_F(slot_t) *s, const V *x,
                                 tl_tile_dv *sum, const unsigned how)
{
    const TL_F(sel_t) *sl = &s->sel;
    const ptrdiff_t n = q->n, K = sl->Kmax, ss = q->ss;
    if (!q->term || K == 0)
        return;
    /* lanes with no valid step are left out; targets gathered lane by lane */
    TL_FOR(i, how, n)
        TL_UNROLL for (int h = 0; h < TL_P; h++) {
            V tgt = TL_F(splat)(0), d;
            for (int l = 0; l < TL_L; l++) {
                const ptrdiff_t b = s->b0 + h * TL_L + l, Kl = sl->K[h * TL_L + l];
                if (Kl > 0)
                    tgt[l] = q->tgt != NULL ? q->tgt[b * n + i] : q->rs[b * ss + Kl * n + i];
            }
            const V r = x[i * TL_P + h] - tgt;
            const V e = TL_F(vrho)(q->pen, q->delta, &r, &d);
            const V gd = (q->sf * q->sw[i]) * d;
            const V ve = TL_KEEP((M)(sl->fin[h] > TL_F(splat_i)(0)), q->sw[i] * e);
            TL_F(acc)(sum, h, &ve);
            for (int l = 0; l < TL_L; l++) {
                const ptrdiff_t Kl = sl->K[h * TL_L + l];
                if (Kl > 0)
                    TL_F(put)(s->G, Kl * n + i, h * TL_L + l,
                              TL_F(get)(s->G, Kl * n + i, h * TL_L + l) + gd[l]);
            }
        }
}

/* ---- the backward pass ----------------------------------------------------- */

TL_INLINE void TL_F(backward_begin)(const TL_F(call_t) *q, const TL_F(slot_t) *s, V *lam,
                                    const unsigned how)
{
    const ptrdiff_t n = q->n, K = s->sel.Kmax;
    if (!q->states)
        return;
    TL_FOR(i, how, n)
        TL_UNROLL for (int h = 0; h < TL_P; h++)
            lam[i * TL_P + h] = s->G[(K * n + i) * TL_P + h];
}

/* Step k: grad u_k = Gc_k + B_k^T lam_{k+1} and ln = lam_k = G_k + A_k^T
 * lam_{k+1}; lanes that end at or before state k keep Gc_k and G_k, which
 * are 0 after their final state, so lam stays exactly 0 there whatever A_k
 * holds. */
TL_INLINE void TL_F(backward_step)(const TL_F(call_t) *q, TL_F(slot_t) *s, ptrdiff_t k,
                                   const V *lam, V *restrict ln, const unsigned how)
{
    const ptrdiff_t n = q->n, m = q->m;
    const TL_F(sel_t) *sl = &s->sel;
    if (!q->states) /* the gradient is Gc_k, as it is */
        return;
    if (!(how & TL_HOW_ONE) && (q->a_tv | q->b_tv))
        TL_F(mats_at)(q, s, k, (unsigned)(q->a_tv | q->b_tv << 1));
    M live[TL_P];
    TL_UNROLL for (int h = 0; h < TL_P; h++)
        live[h] = (M)(TL_F(splat_i)(k) < sl->fin[h]);
    const M *lv = sl->ragged ? live : NULL;
    const TL_F(mat_t) none = {NULL, NULL, 0, 0, 0};
    if (q->gu != NULL) { /* grad u_k replaces Gc_k, to leave lane layout at the end */
        const TL_F(mat_t) Bt = {s->Bv, s->Bs, 1, m, n};
        V *Gc = s->Gc + k * m * TL_P;
        TL_F(mv)(how, m, Gc, &Bt, lam, &none, NULL, lv, s->gu);
        TL_FOR(j, how, m)
            TL_UNROLL for (int h = 0; h < TL_P; h++)
                Gc[j * TL_P + h] = s->gu[j * TL_P + h];
    }
    const TL_F(mat_t) At = {s->Av, s->As, 1, n, n};
    TL_F(mv)(how, n, s->G + k * n * TL_P, &At, lam, &none, NULL, lv, ln);
}

/* grad x0 = lam_0, and zero gradients after the tile's last step; each
 * gradient element written goes into chk (TL_CHK). */
TL_INLINE void TL_F(backward_end)(const TL_F(call_t) *q, const TL_F(slot_t) *s, const V *lam,
                                  M *chk, const unsigned how)
{
    const ptrdiff_t n = q->n, T = q->T, m = q->m, K = s->sel.Kmax;
    if (q->gx != NULL) {
        TL_FOR(i, how, n) {
            if (q->states) {
                TL_UNROLL for (int h = 0; h < TL_P; h++)
                    TL_CHK(chk[h], lam[i * TL_P + h]);
                TL_F(scatter)(lam + i * TL_P, q->gx + s->b0 * n + i, n);
            } else {
                for (int l = 0; l < TL_TILE; l++)
                    q->gx[(s->b0 + l) * n + i] = 0;
            }
        }
    }
    if (q->gu != NULL && K > 0) {
        for (ptrdiff_t e = 0; e < K * m; e++)
            TL_UNROLL for (int h = 0; h < TL_P; h++)
                TL_CHK(chk[h], s->Gc[e * TL_P + h]);
        TL_F(rows_out)(s->Gc, K * m, q->gu + s->b0 * q->su, q->su);
    }
    if (q->gu != NULL && K < T)
        for (int l = 0; l < TL_TILE; l++)
            memset(q->gu + (s->b0 + l) * q->su + K * m, 0, (size_t)((T - K) * m) * sizeof(TL_T));
}

/* ---- a run of tiles ---------------------------------------------------------- */

/* The tile from b0 enters slot s: its selection and per-sample matrices. */
static void TL_F(tile_begin)(TL_F(call_t) *q, TL_F(slot_t) *s, ptrdiff_t b0)
{
    s->b0 = b0;
    if (!q->c->uniform)
        TL_F(select_tile)(q, &s->sel, b0);
    const unsigned fixed = TL_F(fixed_fields)(q->c->dyn, 1);
    if (fixed != 0 && q->states)
        TL_F(mats_at)(q, s, 0, fixed);
    /* the rows up to the tile's last valid step, into lane layout */
    const ptrdiff_t K = s->sel.Kmax, m = q->m, n = q->n;
    if (K > 0 && (q->states || q->ctl))
        TL_F(rows_in)(q->u + b0 * q->su, q->su, K * m, s->U);
    if (K > 0 && q->ctl)
        TL_F(rows_in)(q->ru + b0 * q->su, q->su, K * m, s->RU);
    if (K > 0 && q->traj)
        TL_F(rows_in)(q->rs + b0 * q->ss, q->ss, (K + 1) * n, s->RS);
}

/* After a step from *cur into *next: *cur holds the new value. A copy in
 * the TL_HOW_ONE versions, whose arrays stay where they are (registers);
 * elsewhere the two pointers change places. */
TL_INLINE void TL_F(advance)(ptrdiff_t n, V **cur, V **next, const unsigned how)
{
    if (how & TL_HOW_ONE) {
        TL_FOR(i, how, n)
            TL_UNROLL for (int h = 0; h < TL_P; h++)
                (*cur)[i * TL_P + h] = (*next)[i * TL_P + h];
    } else {
        V *t = *cur;
        *cur = *next;
        *next = t;
    }
}

/* The end of a run of tiles: sums[i] += the tile sums sum[i], lane by
 * lane in lane order; *grads_nonfinite = 1 when chk holds a NaN's bits. */
static void TL_F(run_end)(tl_tile_dv sum[3][TL_SV], const M chk[TL_P], double sums[3],
                          int *grads_nonfinite)
{
    for (int i = 0; i < 3; i++) {
        double total = 0.0;
        for (int v = 0; v < TL_SV; v++)
            for (int l = 0; l < (int)(sizeof sum[i][v] / sizeof(double)); l++)
                total += sum[i][v][l];
        sums[i] += total;
    }
    for (int h = 0; h < TL_P; h++)
        for (int l = 0; l < TL_L; l++)
            if (chk[h][l] != 0)
                *grads_nonfinite = 1;
}

/* `tiles` tiles from b0, each through its forward pass and then (when a
 * gradient is wanted) its backward pass; `how`, a constant, is the version.
 * Adds the tiles' term sums to sums[0..2], lane by lane in lane order, and
 * sets *grads_nonfinite when a gradient element written is NaN or inf. In
 * the TL_HOW_ONE versions steps go in pairs, x_k in xa and x_{k+1} in xb
 * then back, so that which array holds what is known when compiling and
 * both stay in registers; the others swap pointers. */
TL_INLINE void TL_F(run)(TL_F(call_t) *q, ptrdiff_t b0, ptrdiff_t tiles, double sums[3],
                         int *grads_nonfinite, const unsigned how)
{
    M chk[TL_P]; /* every gradient element written (TL_CHK) */
    TL_UNROLL for (int h = 0; h < TL_P; h++)
        chk[h] = TL_F(splat_i)(0);
    TL_F(slot_t) *s = &q->slot;
    const ptrdiff_t n = q->n;
    const int grads = q->gu != NULL || q->gx != NULL;
    tl_tile_dv sum[3][TL_SV];
    memset(sum, 0, sizeof sum);
    /* the TL_HOW_ONE versions' x, xn, lam, ln (each lane's final state, xf,
     * is updated only when lanes end at different steps: it stays in the
     * scratch, out of the registers) */
    V own[4][TL_ONE * TL_P] = {{{0}}}; /* (not memset: the address would keep them in memory) */
    const int one = (how & TL_HOW_ONE) != 0;
    V *xa = one ? own[0] : s->x, *xb = one ? own[1] : s->xn, *xf = s->xf;
    V *la = one ? own[2] : s->lam, *lb = one ? own[3] : s->ln;
    for (ptrdiff_t t = 0; t < tiles; t++) {
        TL_F(tile_begin)(q, s, b0 + t * TL_TILE);
        const ptrdiff_t K = s->sel.Kmax;
        ptrdiff_t k = 0;
        TL_F(forward_begin)(q, s, xa, xf, sum[1], how);
        for (; one && k + 2 <= K; k += 2) {
            TL_F(forward_step)(q, s, k, xa, xb, xf, sum, how);
            TL_F(forward_step)(q, s, k + 1, xb, xa, xf, sum, how);
        }
        for (; k < K; k++) { /* (in the TL_HOW_ONE versions, the odd last step) */
            TL_F(forward_step)(q, s, k, xa, xb, xf, sum, how);
            TL_F(advance)(n, &xa, &xb, how);
        }
        if (s->sel.ragged) /* two calls, so that each reads an array known when compiling */
            TL_F(forward_end)(q, s, xf, sum[2], how);
        else
            TL_F(forward_end)(q, s, xa, sum[2], how);
        if (!grads)
            continue;
        TL_F(backward_begin)(q, s, la, how);
        for (k = K - 1; one && k >= 1; k -= 2) {
            TL_F(backward_step)(q, s, k, la, lb, how);
            TL_F(backward_step)(q, s, k - 1, lb, la, how);
        }
        for (; k >= 0; k--) {
            TL_F(backward_step)(q, s, k, la, lb, how);
            TL_F(advance)(n, &la, &lb, how);
        }
        TL_F(backward_end)(q, s, la, chk, how);
    }
    TL_F(run_end)(sum, chk, sums, grads_nonfinite);
}

/* The versions (a function each, so that each is compiled once):
 * fn_k is fn with its last argument, a constant, k. Also for the uniform
 * version below. */
#define TL_FIXED(fn, k)                                                                       \
    static void TL_F(fn##_##k)(TL_F(call_t) *q, ptrdiff_t b0, ptrdiff_t tiles,                \
                               double sums[3], int *grads_nonfinite)                          \
    {                                                                                         \
        TL_F(fn)(q, b0, tiles, sums, grads_nonfinite, k);                                     \
    }
TL_FIXED(run, 0)
TL_FIXED(run, 1)
TL_FIXED(run, 2)
TL_FIXED(run, 3)
#if TL_TILE_VREG_BYTES >= 32
TL_FIXED(run, 6) /* TL_HOW_ONE | TL_HOW_MSE: see tl_tile_run */
#endif

#undef TL_FIXED

/* ---- the uniform version ------------------------------------------------------ *
 * The common case of small-system training, written on its own: a uniform
 * selection (no lengths or mask: every lane scores every step, state 0
 * with the shift alone, and ends at state T), a system shared by the
 * batch and fixed in time, the squared error, n, m <= TL_UNI_DIM and T >=
 * TL_G. There is nothing to select: no masks, no final states to keep,
 * and the weights are call_t's scalars, one a step and component (uw).
 *
 * Its unit is a chain: TL_L consecutive sequences, one vector a value.
 * TL_UNI_C chains run side by side (the two vectors of a float64 tile, or
 * two float32 tiles), so that the multipliers have two independent
 * rollouts and adjoints to work on. The steps go in groups of TL_G: a
 * group's controls, reference controls and reference states are read from
 * the rows as TL_G-column blocks, transposed in registers and used there
 * -- scored, rolled out -- without a round trip through lane buffers; the
 * control gradients of a group leave the same way. Only the penalty
 * derivatives G, Gc wait in the scratch for the backward pass. (The last
 * group overlaps the one before when T is not a multiple of TL_G; its
 * steps done already are skipped.)
 *
 * The sizes n, m are the compiler's: a block's column c is step c / m's
 * control c % m, and that index must be a constant for the block to stay
 * in registers. One function body serves the four (n, m), given as
 * constants by tl_tile_run's table, each twice: `full`, combined_loss's
 * case with nothing left to run time (all three terms, the control
 * gradients, no offset, one weight for every element), and the rest, where
 * T, the terms, the offset, the gradients and the weights are run-time. */

/* x in every lane, -0 included (a broadcast, no arithmetic). */
TL_INLINE V TL_F(bcast)(TL_T x)
{
    V v = {0};
    for (int l = 0; l < TL_L; l++)
        v[l] = x;
    return v;
}

/* The scalar weights of a uniform selection (every lane's are sequence
 * 0's), the squared error's factor 2 in the gradient ones:
 *   control step k, feature j    cwv[k m + j] = w_k f_j,     cwg = 2 scale[0] w_k f_j
 *   state k, component i         swv[k n + i] = w'_k s_i,    swg = 2 scale[1] w'_k s_i
 * (w'_k the state weights of select_lane: w_{k-1}, or the shifted ones). */
static TL_F(uw_t) TL_F(uniform_weights)(const TL_F(call_t) *q, TL_T *room, int prepared)
{
    const tl_loss_ctx *c = q->c;
    const tl_selection *sel = &c->spec->sel;
    const ptrdiff_t T = q->T, n = q->n, m = q->m;
    double *w = q->row;
    TL_F(uw_t) u = {room, room + T * m, room + 2 * T * m, room + 2 * T * m + (T + 1) * n,
                    room + 2 * T * m + 2 * (T + 1) * n};
    if (prepared)
        return u;
    tl_sel_weights(sel, 0, 0, c->powers, w);
    for (ptrdiff_t k = 0; k < T; k++)
        for (ptrdiff_t j = 0; j < m; j++) {
            u.cwv[k * m + j] = (TL_T)w[k] * q->fw[j];
            u.cwg[k * m + j] = (TL_T)(2.0 * c->scale[0] * w[k]) * q->fw[j];
        }
    TL_F(state_weights)(q, 0, w);
    for (ptrdiff_t k = 0; k <= T; k++)
        for (ptrdiff_t i = 0; i < n; i++) {
            u.swv[k * n + i] = (TL_T)w[k] * q->sw[i];
            u.swg[k * n + i] = (TL_T)(2.0 * c->scale[1] * w[k]) * q->sw[i];
        }
    u.one[0] = u.one[1] = 1;
    for (ptrdiff_t e = 0; e < T * m; e++)
        if (u.cwv[e] != u.cwv[0] || u.cwg[e] != u.cwg[0])
            u.one[0] = 0;
    const ptrdiff_t e0 = q->shift ? 0 : n; /* the states scored */
    for (ptrdiff_t e = e0; e < (T + 1) * n; e++)
        if (u.swv[e] != u.swv[e0] || u.swg[e] != u.swg[e0])
            u.one[1] = 0;
    return u;
}

/* Steps of a group; chains side by side; groups between float32's flushes. */
#define TL_G 4
#define TL_FLUSH 4
#define TL_UNI_C (TL_P == 1 ? 2 : TL_P)
/* for i < len, len <= max: unrolled whole (the unroll annotation wants a
 * constant bound when parsing, before the sizes are constants) */
#define TL_UPTO(i, max, len)                                                                  \
    TL_UNROLL for (int i = 0; i < (max); i++)                                                 \
        if (i >= (len))                                                                       \
            break;                                                                            \
        else

/* v[c] = r[c]'s transpose in blocks of 4 x 4: lane 4 q + l of v[c] is lane
 * 4 q + c of r[l] (4 lanes or 8, two blocks side by side: two rounds of
 * rows_in's swaps, which never cross a 4-lane block). */
TL_INLINE void TL_F(transpose4)(V r[4])
{
#if TL_LN >= 4
    TL_UNROLL for (int i = 0; i < 4; i += 2) { /* round 1: bit 0 of row and lane */
        const V a = r[i], b = r[i + 1];
        r[i] = TL_SHUF(a, b, TL_SWAP_LO, 1);
        r[i + 1] = TL_SHUF(a, b, TL_SWAP_HI, 1);
    }
    TL_UNROLL for (int i = 0; i < 2; i++) { /* round 2: bit 1 */
        const V a = r[i], b = r[i + 2];
        r[i] = TL_SHUF(a, b, TL_SWAP_LO, 2);
        r[i + 2] = TL_SHUF(a, b, TL_SWAP_HI, 2);
    }
#else
    TL_UNROLL for (int i = 0; i < 4; i += 2) { /* two 2 x 2 blocks */
        const V a = r[i], b = r[i + 1];
        r[i] = TL_SHUF(a, b, TL_SWAP_LO, 1);
        r[i + 1] = TL_SHUF(a, b, TL_SWAP_HI, 1);
    }
#endif
}

/* A chain's block of TL_G columns: lane l of v[c] is p[l stride + c]. */
TL_INLINE void TL_F(cols_in)(const TL_T *p, ptrdiff_t stride, V v[TL_G])
{
#if TL_LN >= 4
    TL_UNROLL for (int k = 0; k < 4; k++) {
#if TL_LN == 4
        memcpy(&v[k], p + k * stride, sizeof v[k]);
#else
        typedef TL_T H __attribute__((vector_size(4 * TL_TB)));
        H lo, hi;
        memcpy(&lo, p + k * stride, sizeof lo);
        memcpy(&hi, p + (k + 4) * stride, sizeof hi);
        v[k] = __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
#endif
    }
    TL_F(transpose4)(v);
#else
    /* 2 lanes: v[0], v[1] from rows 0, 1 columns 0, 1; v[2], v[3] from 2, 3 */
    TL_UNROLL for (int k = 0; k < 4; k++)
        memcpy(&v[k], p + (k & 1) * stride + (k & 2), sizeof v[k]);
    TL_F(transpose4)(v);
#endif
}

/* The inverse: p[l stride + c] = lane l of v[c] (v is overwritten). */
TL_INLINE void TL_F(cols_out)(V v[TL_G], TL_T *p, ptrdiff_t stride)
{
    TL_F(transpose4)(v);
#if TL_LN >= 4
    TL_UNROLL for (int k = 0; k < 4; k++) {
#if TL_LN == 4
        memcpy(p + k * stride, &v[k], sizeof v[k]);
#else
        typedef TL_T H __attribute__((vector_size(4 * TL_TB)));
        const H lo = __builtin_shufflevector(v[k], v[k], 0, 1, 2, 3);
        const H hi = __builtin_shufflevector(v[k], v[k], 4, 5, 6, 7);
        memcpy(p + k * stride, &lo, sizeof lo);
        memcpy(p + (k + 4) * stride, &hi, sizeof hi);
#endif
    }
#else
    TL_UNROLL for (int k = 0; k < 4; k++)
        memcpy(p + (k & 1) * stride + (k & 2), &v[k], sizeof v[k]);
#endif
}

/* sum += part, lane by lane (in double). */
TL_INLINE void TL_F(uniform_flush)(tl_tile_dv *sum, int c, V part)
{
    TL_F(acc)(sum, c % TL_P, &part);
}

/* NC chains from sequence b (NC, N, MM, full: constants): their sums added
 * to sum[0..2], their gradients written, each into chk (TL_CHK). a[i N +
 * j] = A_ij, bm[i MM + j] = B_ij and cv[i] = c_i broadcast. G (T + 1) N
 * and Gc T MM values of NC vectors (element e of chain c at e NC + c):
 * the derivatives of the states' and the controls' penalties, the
 * backward pass's input. Forward, a group at a time:
 *   control term   d = u - ru, Gc = cwg d
 *   rollout        x_{k+1} = B u_k + c + A x_k
 *   trajectory     r = x_{k+1} - rs_{k+1}, G_{k+1} = swg r
 * then the terminal term at x_T, added to G_T. Backward, a group at a
 * time from the end: grad u_k = Gc_k + B^T lam_{k+1}, lam_k = G_k + A^T
 * lam_{k+1}, from lam_T = G_T down to grad x0 = lam_0. */
TL_INLINE void TL_F(uniform_chains)(const TL_F(call_t) *q, ptrdiff_t b, const V *a, const V *bm,
                                    const V *cv, tl_tile_dv sum[][TL_SV], M *chk, const int NC,
                                    const int N, const int MM, const int full)
{
    const ptrdiff_t T = q->T, su = q->su, ss = q->ss, cs = TL_L; /* cs: a chain's rows */
    const int ctl = full || q->ctl, traj = full || q->traj, term = full || q->term;
    const int want_gu = full || q->gu != NULL;
    const int grads = want_gu || q->gx != NULL, one = full;
    const int offset = !full && q->c->dyn->c.data != NULL;
    const TL_F(uw_t) *w = &q->uw;
    const ptrdiff_t e1 = q->shift ? 0 : N; /* the first state element scored */
    const TL_T cw1 = w->cwv[0], cg1 = w->cwg[0], sw1 = w->swv[e1], sg1 = w->swg[e1];
    V *G = q->slot.room, *Gc = G + (T + 1) * N * NC;
    /* the tile's rows (an array not read is NULL: no offset from it) */
    const TL_T *U = q->u + b * su, *RU = ctl ? q->ru + b * su : NULL;
    const TL_T *RS = q->rs != NULL ? q->rs + b * ss : NULL;
    TL_T *GU = want_gu ? q->gu + b * su : NULL;
    V x[TL_UNI_C][TL_UNI_DIM] = {{{0}}};

    { /* x_0, and G_0: scored with the shift alone */
        TL_UPTO(c, TL_UNI_C, NC) {
            TL_UPTO(i, TL_UNI_DIM, N)
                x[c][i] = TL_F(gather)(q->x0 + (b + c * cs) * N + i, N, 0);
            if (traj && q->shift) {
                V rs0[TL_G];
                TL_F(cols_in)(RS + c * cs * ss, ss, rs0);
                V part = TL_F(splat)(0);
                TL_UPTO(i, TL_UNI_DIM, N) {
                    const V r = x[c][i] - rs0[i];
                    part += (r * r) * w->swv[i];
                    G[i * NC + c] = r * w->swg[i];
                }
                TL_F(uniform_flush)(sum[1], c, part);
            } else {
                TL_UPTO(i, TL_UNI_DIM, N)
                    G[i * NC + c] = TL_F(splat)(0);
            }
        }
    }
    /* running sums, a control and state component each, into sum every
     * TL_FLUSH groups (float32's rounding grows with TL_FLUSH TL_G, not
     * with the sequence) and at the end */
    V pc[TL_UNI_C][TL_UNI_DIM], ps[TL_UNI_C][TL_UNI_DIM];
    TL_UPTO(c, TL_UNI_C, NC) {
        TL_UPTO(j, TL_UNI_DIM, MM)
            pc[c][j] = TL_F(splat)(0);
        TL_UPTO(i, TL_UNI_DIM, N)
            ps[c][i] = TL_F(splat)(0);
    }
    for (ptrdiff_t k0 = 0; k0 < T; k0 += TL_G) {
        const ptrdiff_t e0 = k0 < T - TL_G ? k0 : T - TL_G; /* the group's first step */
        /* the control term first: its blocks die before the states' arrive */
        V u[TL_UNI_C][TL_G * TL_UNI_DIM], ru[TL_UNI_C][TL_G * TL_UNI_DIM];
        TL_UPTO(c, TL_UNI_C, NC) {
            TL_UPTO(j, TL_UNI_DIM, MM) {
                TL_F(cols_in)(U + c * cs * su + e0 * MM + j * TL_G, su, u[c] + j * TL_G);
                if (ctl)
                    TL_F(cols_in)(RU + c * cs * su + e0 * MM + j * TL_G, su, ru[c] + j * TL_G);
                else
                    TL_UNROLL for (int e = 0; e < TL_G; e++)
                        ru[c][j * TL_G + e] = TL_F(splat)(0);
            }
        }
        TL_UNROLL for (int s = 0; s < TL_G; s++) {
            const ptrdiff_t k = e0 + s;
            if (!ctl)
                break;
            if (k < k0) /* done by the group before */
                continue;
            TL_UPTO(c, TL_UNI_C, NC)
                TL_UPTO(j, TL_UNI_DIM, MM) {
                    const V d = u[c][s * MM + j] - ru[c][s * MM + j];
                    pc[c][j] += one ? d * d : (d * d) * w->cwv[k * MM + j];
                    Gc[(k * MM + j) * NC + c] = d * (one ? cg1 : w->cwg[k * MM + j]);
                }
        }
        /* the rollout and the trajectory term; a block of reference states
         * is read at the step that first needs it */
        V rs[TL_UNI_C][TL_G];
        TL_UNROLL for (int s = 0; s < TL_G; s++) {
            const ptrdiff_t k = e0 + s;
            if (traj && (s * N) % TL_G == 0) {
                TL_UPTO(c, TL_UNI_C, NC)
                    TL_F(cols_in)(RS + c * cs * ss + (k + 1) * N, ss, rs[c]);
            }
            if (k < k0) /* done by the group before */
                continue;
            TL_UPTO(c, TL_UNI_C, NC) {
                const V *uk = u[c] + s * MM;
                V xn[TL_UNI_DIM];
                TL_UPTO(i, TL_UNI_DIM, N) {
                    V acc = bm[i * MM] * uk[0];
                    if (offset)
                        acc += cv[i];
                    TL_UPTO(j, TL_UNI_DIM, MM) if (j > 0)
                        acc += bm[i * MM + j] * uk[j];
                    TL_UPTO(j, TL_UNI_DIM, N)
                        acc += a[i * N + j] * x[c][j];
                    xn[i] = acc;
                }
                TL_UPTO(i, TL_UNI_DIM, N) {
                    x[c][i] = xn[i];
                    const ptrdiff_t e = (k + 1) * N + i;
                    if (!traj) {
                        G[e * NC + c] = TL_F(splat)(0);
                        continue;
                    }
                    const V r = xn[i] - rs[c][(s * N + i) % TL_G];
                    ps[c][i] += one ? r * r : (r * r) * w->swv[e];
                    G[e * NC + c] = r * (one ? sg1 : w->swg[e]);
                }
            }
        }
        if (k0 + TL_G < T && (TL_TB == 8 || (k0 / TL_G + 1) % TL_FLUSH != 0))
            continue;
        TL_UPTO(c, TL_UNI_C, NC) {
            V p = pc[c][0], t = ps[c][0];
            TL_UPTO(j, TL_UNI_DIM, MM) if (j > 0)
                p += pc[c][j];
            TL_UPTO(i, TL_UNI_DIM, N) if (i > 0)
                t += ps[c][i];
            if (ctl)
                TL_F(uniform_flush)(sum[0], c, one ? p * cw1 : p);
            if (traj)
                TL_F(uniform_flush)(sum[1], c, one ? t * sw1 : t);
            TL_UPTO(j, TL_UNI_DIM, MM)
                pc[c][j] = TL_F(splat)(0);
            TL_UPTO(i, TL_UNI_DIM, N)
                ps[c][i] = TL_F(splat)(0);
        }
    }
    if (term) { /* at x_T, against target[b] or rs_T */
        TL_UPTO(c, TL_UNI_C, NC) {
            V part = TL_F(splat)(0);
            TL_UPTO(i, TL_UNI_DIM, N) {
                const TL_T *row = q->tgt != NULL ? q->tgt + (b + c * cs) * N + i : NULL;
                const V tgt = row != NULL ? TL_F(gather)(row, N, 0)
                                          : TL_F(gather)(RS + c * cs * ss + T * N + i, ss, 0);
                const V r = x[c][i] - tgt;
                part += q->sw[i] * (r * r);
                G[(T * N + i) * NC + c] += (q->sf * q->sw[i]) * (r + r);
            }
            TL_F(uniform_flush)(sum[2], c, part);
        }
    }
    if (!grads)
        return;
    V (*lam)[TL_UNI_DIM] = x;
    TL_UPTO(c, TL_UNI_C, NC)
        TL_UPTO(i, TL_UNI_DIM, N)
            lam[c][i] = G[(T * N + i) * NC + c];
    for (ptrdiff_t k1 = T; k1 > 0; k1 -= TL_G) {
        const ptrdiff_t e0 = k1 > TL_G ? k1 - TL_G : 0; /* steps e0 .. k1 - 1 */
        V gu[TL_UNI_C][TL_G * TL_UNI_DIM] = {{{0}}};
        if (want_gu && e0 + TL_G > k1) { /* the columns from k1 on are out already */
            TL_UPTO(c, TL_UNI_C, NC)
                TL_UPTO(j, TL_UNI_DIM, MM)
                    TL_F(cols_in)(GU + c * cs * su + e0 * MM + j * TL_G, su, gu[c] + j * TL_G);
        }
        TL_UNROLL for (int s = TL_G - 1; s >= 0; s--) {
            const ptrdiff_t k = e0 + s;
            if (k >= k1)
                continue;
            TL_UPTO(c, TL_UNI_C, NC) {
                if (want_gu) {
                    TL_UPTO(j, TL_UNI_DIM, MM) {
                        V acc = ctl ? Gc[(k * MM + j) * NC + c] : TL_F(splat)(0);
                        TL_UPTO(i, TL_UNI_DIM, N)
                            acc += bm[i * MM + j] * lam[c][i];
                        gu[c][s * MM + j] = acc;
                        TL_CHK(chk[c], acc);
                    }
                }
                V ln[TL_UNI_DIM];
                TL_UPTO(i, TL_UNI_DIM, N) {
                    V acc = G[(k * N + i) * NC + c];
                    TL_UPTO(j, TL_UNI_DIM, N)
                        acc += a[j * N + i] * lam[c][j];
                    ln[i] = acc;
                }
                TL_UPTO(i, TL_UNI_DIM, N)
                    lam[c][i] = ln[i];
            }
        }
        if (want_gu) {
            TL_UPTO(c, TL_UNI_C, NC)
                TL_UPTO(j, TL_UNI_DIM, MM)
                    TL_F(cols_out)(gu[c] + j * TL_G, GU + c * cs * su + e0 * MM + j * TL_G, su);
        }
    }
    if (q->gx == NULL)
        return;
    TL_UPTO(c, TL_UNI_C, NC)
        TL_UPTO(i, TL_UNI_DIM, N) {
            TL_CHK(chk[c], lam[c][i]);
            TL_UNROLL for (int l = 0; l < TL_L; l++)
                q->gx[(b + c * cs + l) * N + i] = lam[c][i][l];
        }
}

/* The control term alone (no state scored, and a call has some term):
 * elementwise, in the rows as they are, nothing to transpose. Element e of
 * a row weighs cwv[e], its derivative is cwg[e] (u - ru). */
static void TL_F(uniform_controls)(const TL_F(call_t) *q, ptrdiff_t b0, ptrdiff_t count,
                                   double sums[3], int *grads_nonfinite)
{
    const ptrdiff_t su = q->su;
    const TL_T *cwv = q->uw.cwv, *cwg = q->uw.cwg;
    double total = 0.0;
    int bad = 0;
    for (ptrdiff_t b = b0; b < b0 + count; b++) {
        const TL_T *u = q->u + b * su, *ru = q->ru + b * su;
        TL_T *gu = q->gu != NULL ? q->gu + b * su : NULL;
        double row = 0.0;
        for (ptrdiff_t e = 0; e < su; e++) {
            const TL_T d = u[e] - ru[e];
            row += (double)((d * d) * cwv[e]);
            if (gu != NULL) {
                gu[e] = d * cwg[e];
                bad |= !(gu[e] - gu[e] == 0);
            }
        }
        total += row;
    }
    sums[0] += total;
    if (bad)
        *grads_nonfinite = 1;
}

/* The tiles from b0 in groups of TL_UNI_C chains (a float32 tile alone at
 * the end: one chain), through uniform_chains with n = N, m = MM. */
TL_INLINE void TL_F(run_uniform)(TL_F(call_t) *q, ptrdiff_t b0, ptrdiff_t tiles, double sums[3],
                                 int *grads_nonfinite, const int N, const int MM, const int full)
{
    const TL_F(slot_t) *s = &q->slot;
    /* the coefficients, broadcast once: a[i N + j] = A_ij, bm[i MM + j] = B_ij, c */
    V a[TL_UNI_DIM * TL_UNI_DIM], bm[TL_UNI_DIM * TL_UNI_DIM], cv[TL_UNI_DIM];
    TL_UPTO(i, TL_UNI_DIM, N) {
        TL_UPTO(j, TL_UNI_DIM, N)
            a[i * N + j] = TL_F(bcast)(s->As[i * N + j]);
        TL_UPTO(j, TL_UNI_DIM, MM)
            bm[i * MM + j] = TL_F(bcast)(s->Bs[i * MM + j]);
        cv[i] = s->cv[i * TL_P];
    }
    M chk[TL_UNI_C];
    for (int c = 0; c < TL_UNI_C; c++)
        chk[c] = TL_F(splat_i)(0);
    tl_tile_dv sum[3][TL_SV];
    memset(sum, 0, sizeof sum);
    const ptrdiff_t per = TL_UNI_C / TL_P; /* tiles a group of chains */
    ptrdiff_t t = 0;
    for (; t + per <= tiles; t += per)
        TL_F(uniform_chains)(q, b0 + t * TL_TILE, a, bm, cv, sum, chk, TL_UNI_C, N, MM, full);
    for (; t < tiles; t++)
        TL_F(uniform_chains)(q, b0 + t * TL_TILE, a, bm, cv, sum, chk, TL_P, N, MM, full);
    M tile_chk[TL_P];
    for (int h = 0; h < TL_P; h++)
        tile_chk[h] = TL_F(splat_i)(0);
    for (int c = 0; c < TL_UNI_C; c++)
        tile_chk[c % TL_P] |= chk[c];
    TL_F(run_end)(sum, tile_chk, sums, grads_nonfinite);
}

/* The uniform version for each n, m <= TL_UNI_DIM, for the full case and
 * the rest: uniform_<n><m><full>. */
#define TL_UNIFORM(N, MM, FULL)                                                               \
    static void TL_F(uniform_##N##MM##FULL)(TL_F(call_t) *q, ptrdiff_t b0, ptrdiff_t tiles,   \
                                             double sums[3], int *grads_nonfinite)            \
    {                                                                                         \
        TL_F(run_uniform)(q, b0, tiles, sums, grads_nonfinite, N, MM, FULL);                  \
    }
TL_UNIFORM(1, 1, 0)
TL_UNIFORM(1, 1, 1)
TL_UNIFORM(1, 2, 0)
TL_UNIFORM(1, 2, 1)
TL_UNIFORM(2, 1, 0)
TL_UNIFORM(2, 1, 1)
TL_UNIFORM(2, 2, 0)
TL_UNIFORM(2, 2, 1)
#undef TL_UNIFORM

/* ---- the kernel ----------------------------------------------------------------- */

/* Carves the call's scratch (tl_tile_layout_of) and prepares what every
 * tile shares: weights, the selection of a uniform batch, shared matrices. */
static void TL_F(call_init)(TL_F(call_t) *q, const tl_loss_ctx *c, double *work, int prepared)
{
    const tl_loss_spec *spec = c->spec;
    const tl_loss_io *io = c->io;
    const tl_dynamics *d = c->dyn;
    const ptrdiff_t T = c->T, n = c->n, m = c->m;
    tl_tile_layout lay;
    tl_tile_layout_of(n, m, T, &lay);

    memset(q, 0, sizeof *q);
    q->c = c;
    q->T = T;
    q->n = n;
    q->m = m;
    q->su = T * m;
    q->ss = (T + 1) * n;
    q->ctl = (spec->terms & TL_TERM_CONTROL) != 0;
    q->traj = (spec->terms & TL_TERM_TRAJECTORY) != 0;
    q->term = (spec->terms & TL_TERM_TERMINAL) != 0;
    q->states = q->traj || q->term;
    q->shift = c->shift;
    q->vec = d->A.batch_stride != 0 || d->B.batch_stride != 0;
    q->a_tv = d->A.step_stride != 0;
    q->b_tv = d->B.step_stride != 0;
    q->c_tv = d->c.data != NULL && d->c.step_stride != 0;
    q->pen = spec->penalty;
    q->delta = (TL_T)spec->delta;
    q->sf = (TL_T)c->scale[2];
    q->u = (const TL_T *)io->controls;
    q->x0 = q->states ? (const TL_T *)io->x0 : NULL;
    q->ru = q->ctl ? (const TL_T *)io->ref_controls : NULL;
    q->rs = (const TL_T *)io->ref_states;
    q->tgt = (const TL_T *)io->target;
    q->gu = (TL_T *)io->grad_controls;
    q->gx = (TL_T *)io->grad_x0;

    q->row = work;
    q->sw = (TL_T *)(q->row + T + 2);
    q->fw = q->sw + n;
    for (ptrdiff_t i = 0; i < n && !prepared; i++)
        q->sw[i] = spec->state_weights != NULL ? (TL_T)spec->state_weights[i] : 1;
    for (ptrdiff_t j = 0; j < m && !prepared; j++)
        q->fw[j] = spec->feature_weights != NULL ? (TL_T)spec->feature_weights[j] : 1;

    /* the tile's room, in tile values (TL_P vectors) from a 64-byte boundary */
    V *v = (V *)tl_tile_align(work + lay.doubles - 2 * TL_TILE);
    TL_F(slot_t) *s = &q->slot;
    s->sel.vc = (M *)v;
    s->sel.vs = s->sel.vc + T * TL_P;
    s->sel.wcv = (V *)(s->sel.vs + (T + 1) * TL_P);
    s->sel.wcg = s->sel.wcv + T * TL_P;
    s->sel.wsv = s->sel.wcg + T * TL_P;
    s->sel.wsg = s->sel.wsv + (T + 1) * TL_P;
    s->G = s->sel.wsg + (T + 1) * TL_P;
    s->Gc = s->G + (T + 1) * n * TL_P;
    s->x = s->Gc + T * m * TL_P;
    s->xn = s->x + n * TL_P;
    s->xf = s->xn + n * TL_P;
    s->lam = s->xf + n * TL_P;
    s->ln = s->lam + n * TL_P;
    s->cv = s->ln + n * TL_P;
    s->gu = s->cv + n * TL_P;
    s->Av = s->gu + m * TL_P;
    s->Bv = s->Av + n * n * TL_P;
    s->U = s->Bv + n * m * TL_P;
    s->RU = s->U + T * m * TL_P;
    s->RS = s->RU + T * m * TL_P;
    s->room = s->RS + (T + 1) * n * TL_P;
    s->As = (TL_T *)s->Av;
    s->Bs = s->As + n * n;
    s->b0 = 0;
    if (prepared)
        return;
    for (ptrdiff_t k = 0; k < n * TL_P; k++)
        s->cv[k] = TL_F(splat)(0);
    if (q->states) /* the matrices shared by the batch and fixed in time */
        TL_F(mats_at)(q, s, 0, TL_F(fixed_fields)(d, 0));
}

static void TL_F(tl_tile_run)(const tl_loss_ctx *c, ptrdiff_t b0, ptrdiff_t count,
                              double sums[3], int *grads_nonfinite, double *work, int prepared)
{
    TL_F(call_t) q;
    TL_F(call_init)(&q, c, work, prepared);
    const ptrdiff_t tiles = count / TL_TILE;
    /* Small systems shared by the batch, fixed in time, with the squared
     * error -- the common case of small-system training -- run the uniform
     * version when no lengths or mask select steps, and otherwise the
     * registers' version (TL_HOW_ONE) on 256-bit registers (with 128-bit
     * ones a tile value takes 2 or 4 of the 16, too many to hold x and
     * lambda); the rest run the general ones. */
    static void (*const version[4])(TL_F(call_t) *, ptrdiff_t, ptrdiff_t, double *, int *) = {
        TL_F(run_0), TL_F(run_1), TL_F(run_2), TL_F(run_3)};
    const unsigned how = (q.vec ? TL_HOW_VEC : 0) | (q.pen == TL_PENALTY_MSE ? TL_HOW_MSE : 0);
    if (c->uniform && how == TL_HOW_MSE && q.n <= TL_UNI_DIM && q.m <= TL_UNI_DIM &&
        !(q.a_tv | q.b_tv | q.c_tv) && (q.T >= TL_G || !q.states)) {
        static void (*const uniform[8])(TL_F(call_t) *, ptrdiff_t, ptrdiff_t, double *, int *) = {
            TL_F(uniform_110), TL_F(uniform_111), TL_F(uniform_120), TL_F(uniform_121),
            TL_F(uniform_210), TL_F(uniform_211), TL_F(uniform_220), TL_F(uniform_221)};
        q.uw = TL_F(uniform_weights)(&q, q.fw + q.m, prepared);
        if (!q.states) { /* the control term alone */
            TL_F(uniform_controls)(&q, b0, tiles * TL_TILE, sums, grads_nonfinite);
            if (q.gx != NULL)
                memset(q.gx + b0 * q.n, 0, (size_t)(tiles * TL_TILE * q.n) * sizeof(TL_T));
            return;
        }
        const int full = q.ctl && q.traj && q.term && q.gu != NULL && c->dyn->c.data == NULL &&
                         q.uw.one[0] && q.uw.one[1];
        uniform[((q.n - 1) * 2 + (q.m - 1)) * 2 + full](&q, b0, tiles, sums, grads_nonfinite);
        return;
    }
    if (c->uniform) /* one selection for every tile (its lane tables and, in q, its ends) */
        TL_F(select_tile)(&q, &q.slot.sel, -1);
#if TL_TILE_VREG_BYTES >= 32
    if (how == TL_HOW_MSE && q.n <= TL_ONE && q.m <= TL_ONE && !(q.a_tv | q.b_tv | q.c_tv))
        TL_F(run_6)(&q, b0, tiles, sums, grads_nonfinite);
    else
#endif
        version[how](&q, b0, tiles, sums, grads_nonfinite);
}

#undef TL_ROWS
#undef TL_SV
#undef TL_HOW_VEC
#undef TL_HOW_MSE
#undef TL_HOW_ONE
#undef TL_ONE
#undef TL_G
#undef TL_FLUSH
#undef TL_UNI_C
#undef TL_UPTO
#undef TL_DIM
#undef TL_FOR
#undef TL_LN
#undef TL_SWAP_LO
#undef TL_SWAP_HI
#undef TL_SHUF
#undef TL_ROUND
#undef TL_L
#undef TL_P
#undef TL_Q
#undef V
#undef M
