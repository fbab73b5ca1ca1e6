/*
 * parallel.c -- POSIX threads over a count of chunks. Threads are started
 * per call and joined before it returns: nothing persists between calls, so
 * the core stays fork-safe and shares no runtime with PyTorch's OpenMP.
 * Callers only go parallel when the work per call dwarfs a thread start.
 *
 * Workers claim small ranges from a shared counter instead of owning a fixed
 * share. On a virtual machine an idle CPU can take hundreds of microseconds
 * to wake up; with fixed halves the calling thread would then wait for the
 * late one, and two threads were measured slower than one (0.88x at
 * B = 16384). Claiming, the calling thread simply does more of the work.
 * Which worker computes a chunk never changes what the chunk computes, so
 * results stay bit-identical for any thread count and any timing.
 */
#define _POSIX_C_SOURCE 200809L /* pthreads under -std=c99 */
#include "parallel.h"

#if !defined(_WIN32) && !defined(__STDC_NO_ATOMICS__)
#include <pthread.h>
#include <stdatomic.h>
#define TL_HAVE_PTHREADS 1
#endif

/* Enough for any machine we expect; more threads than this are capped. */
#define TL_MAX_WORKERS 256

/* A thread start costs tens of microseconds; below this many chunks per
 * worker (1024 sequences) the extra threads would cost more than they save. */
#define TL_MIN_CHUNKS_PER_WORKER 4

/* Claims per worker if all were equally fast: small enough that a late
 * worker leaves little imbalance, large enough that claiming is free. */
#define TL_CLAIMS_PER_WORKER 8

int tl_workers(int threads, ptrdiff_t count)
{
    if (threads > TL_MAX_WORKERS)
        threads = TL_MAX_WORKERS;
    const ptrdiff_t useful = count / TL_MIN_CHUNKS_PER_WORKER;
    if (threads < 1 || useful < 2)
        return 1;
    return useful < threads ? (int)useful : threads;
}

#ifdef TL_HAVE_PTHREADS
typedef struct {
    tl_range_fn fn;
    void *ctx;
    ptrdiff_t count, grain;
    atomic_ptrdiff_t next; /* the first chunk nobody has claimed */
} tl_pool;

typedef struct {
    tl_pool *pool;
    int worker;
} tl_job;

static void *run_job(void *arg)
{
    const tl_job *job = (const tl_job *)arg;
    tl_pool *p = job->pool;
    for (;;) {
        const ptrdiff_t begin = atomic_fetch_add(&p->next, p->grain);
        if (begin >= p->count)
            return NULL;
        const ptrdiff_t end = begin + p->grain < p->count ? begin + p->grain : p->count;
        p->fn(p->ctx, begin, end, job->worker);
    }
}
#endif

void tl_parallel_ranges(int threads, ptrdiff_t count, tl_range_fn fn, void *ctx)
{
    const int workers = tl_workers(threads, count);
#ifdef TL_HAVE_PTHREADS
    if (workers > 1) {
        const ptrdiff_t grain = count / ((ptrdiff_t)workers * TL_CLAIMS_PER_WORKER);
        tl_pool pool = {fn, ctx, count, grain > 1 ? grain : 1, 0};
        tl_job jobs[TL_MAX_WORKERS];
        pthread_t ids[TL_MAX_WORKERS];
        int started[TL_MAX_WORKERS];
        for (int w = 0; w < workers; w++) {
            jobs[w] = (tl_job){&pool, w};
            /* a thread that cannot start just claims nothing */
            started[w] = w > 0 && pthread_create(&ids[w], NULL, run_job, &jobs[w]) == 0;
        }
        run_job(&jobs[0]);
        for (int w = 1; w < workers; w++)
            if (started[w])
                pthread_join(ids[w], NULL);
        return;
    }
#endif
    fn(ctx, 0, count, 0);
}
