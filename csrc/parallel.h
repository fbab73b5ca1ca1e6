/*
 * parallel.h -- split [0, count) into contiguous ranges over worker threads
 * (private to csrc/). Kernels make their results independent of the number
 * of workers by cutting the batch into fixed chunks whose partial sums are
 * added in chunk order afterwards; a worker only decides who computes a chunk.
 */
#ifndef TL_PARALLEL_H
#define TL_PARALLEL_H

#include <stddef.h>

/* Sequences a rollout-loss tile holds side by side (loss.c). */
#define TL_LANES 4

/* Samples per chunk: the unit of work and of partial sums (a multiple of TL_LANES). */
#define TL_CHUNK 256

typedef void (*tl_range_fn)(void *ctx, ptrdiff_t begin, ptrdiff_t end, int worker);

/* How many workers a call with `count` chunks uses: at most `threads`, and
 * only as many as have a few chunks each (>= 1). */
int tl_workers(int threads, ptrdiff_t count);

/*
 * Calls fn(ctx, begin, end, worker) for workers 0 .. tl_workers(threads,
 * count) - 1 on consecutive ranges covering [0, count). Worker 0 runs in the
 * calling thread; if a thread cannot be started its range also runs there.
 */
void tl_parallel_ranges(int threads, ptrdiff_t count, tl_range_fn fn, void *ctx);

#endif /* TL_PARALLEL_H */
