/*
 * parallel.c -- POSIX threads over contiguous ranges. Threads are started
 * per call and joined before it returns: nothing persists between calls, so
 * the core stays fork-safe and shares no runtime with PyTorch's OpenMP.
 * Callers only go parallel when the work per call dwarfs a thread start.
 */
#define _POSIX_C_SOURCE 200809L /* pthreads under -std=c99 */
#include "parallel.h"

#if !defined(_WIN32)
#include <pthread.h>
#define TL_HAVE_PTHREADS 1
#endif

/* Enough for any machine we expect; more threads than this are capped. */
#define TL_MAX_WORKERS 256

/* A thread start costs tens of microseconds; below this many chunks per
 * worker (1024 sequences) the extra threads would cost more than they save. */
#define TL_MIN_CHUNKS_PER_WORKER 4

int tl_workers(int threads, ptrdiff_t count)
{
    if (threads > TL_MAX_WORKERS)
        threads = TL_MAX_WORKERS;
    const ptrdiff_t useful = count / TL_MIN_CHUNKS_PER_WORKER;
    if (threads < 1 || useful < 2)
        return 1;
    return useful < threads ? (int)useful : threads;
}

typedef struct {
    tl_range_fn fn;
    void *ctx;
    ptrdiff_t begin, end;
    int worker;
} tl_job;

static ptrdiff_t range_start(ptrdiff_t count, int workers, int w)
{
    return (ptrdiff_t)((double)count * w / workers); /* exact for count < 2^53 */
}

#ifdef TL_HAVE_PTHREADS
static void *run_job(void *arg)
{
    const tl_job *job = (const tl_job *)arg;
    job->fn(job->ctx, job->begin, job->end, job->worker);
    return NULL;
}
#endif

void tl_parallel_ranges(int threads, ptrdiff_t count, tl_range_fn fn, void *ctx)
{
    const int workers = tl_workers(threads, count);
    if (workers == 1) {
        fn(ctx, 0, count, 0);
        return;
    }
#ifdef TL_HAVE_PTHREADS
    tl_job jobs[TL_MAX_WORKERS];
    pthread_t ids[TL_MAX_WORKERS];
    int started[TL_MAX_WORKERS];
    for (int w = 0; w < workers; w++) {
        jobs[w] = (tl_job){fn, ctx, range_start(count, workers, w),
                           range_start(count, workers, w + 1), w};
        started[w] = w > 0 && pthread_create(&ids[w], NULL, run_job, &jobs[w]) == 0;
    }
    run_job(&jobs[0]);
    for (int w = 1; w < workers; w++) {
        if (started[w])
            pthread_join(ids[w], NULL);
        else
            run_job(&jobs[w]);
    }
#else
    for (int w = 0; w < workers; w++)
        fn(ctx, range_start(count, workers, w), range_start(count, workers, w + 1), w);
#endif
}
