/*
 * parallel.h -- share [0, count) out in ranges among worker threads
 * (private to csrc/). Kernels make their results independent of the number
 * of workers by cutting the batch into fixed chunks whose partial sums are
 * added in chunk order afterwards; a worker only decides who computes a chunk.
 */
#ifndef TL_PARALLEL_H
#define TL_PARALLEL_H

#include <stddef.h>

#include "trajloss.h" /* tl_pool */

/* Samples per chunk: the unit of work and of partial sums (a multiple of
 * TL_TILE, engine.h). Small enough that a batch of a few hundred sequences
 * can be shared among threads when its sequences are long. */
#define TL_CHUNK 64

/* Enough for any machine we expect; more threads than this are capped. */
#define TL_MAX_WORKERS 256

typedef void (*tl_range_fn)(void *ctx, ptrdiff_t begin, ptrdiff_t end, int worker);

/*
 * Calls fn(ctx, begin, end, worker) on ranges covering [0, count) exactly
 * once, in at most min(workers, count) workers numbered from 0 (the caller
 * sizes their scratch). Worker 0 is the calling thread; each worker claims
 * ranges until none are left, so a worker may be called many times or not
 * at all, and a thread that cannot be started leaves its share to the
 * others. The other workers are threads of `pool` (started there as needed),
 * or, if it is NULL or in use by another call, threads started for this call
 * and joined before it returns.
 */
void tl_parallel_ranges(tl_pool *pool, int workers, ptrdiff_t count, tl_range_fn fn, void *ctx);

#endif /* TL_PARALLEL_H */
