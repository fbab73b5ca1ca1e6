/*
 * parallel.c -- worker threads over a count of chunks, and the pool that
 * keeps them between calls.
 *
 * Workers claim small ranges from a shared counter instead of owning a fixed
 * share. On a virtual machine an idle CPU can take hundreds of microseconds
 * to wake up; with fixed halves the calling thread would then wait for the
 * late one. Claiming, the calling thread simply does more of the work.
 * Which worker computes a chunk never changes what the chunk computes, so
 * results stay bit-identical for any thread count and any timing.
 *
 * Pool threads sleep between calls (a condition variable): a call wakes them
 * in some 50 us, which is why the loss driver only asks for another worker
 * when each has a few hundred microseconds of work (loss.c).
 *
 * How a call and the pool threads meet, without a lock on the fast path:
 * the caller writes the call while `open` is 0, sets `open`, then bumps
 * `generation`, which wakes the threads. A thread joins by incrementing
 * `inside` and only then reading `open`; the caller ends the call by
 * clearing `open` and then waiting for `inside` to reach 0. All of these are
 * sequentially consistent, so either a thread sees `open` cleared and leaves
 * without reading the call, or the caller sees it inside and waits for it:
 * nobody reads a call after its caller has returned.
 */
#define _POSIX_C_SOURCE 200809L /* pthreads and clock_gettime under -std=c99 */
#include "parallel.h"

#include <string.h>

#if !defined(_WIN32) && !defined(__STDC_NO_ATOMICS__)
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#define TL_HAVE_PTHREADS 1
#endif

/* Claims per worker if all were equally fast: small enough that a late
 * worker leaves little imbalance, large enough that claiming is free. */
#define TL_CLAIMS_PER_WORKER 8

#ifdef TL_HAVE_PTHREADS

#if defined(__x86_64__) || defined(__i386__)
#define TL_CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define TL_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define TL_CPU_RELAX() ((void)0)
#endif

typedef struct {
    tl_pool *pool;
    int worker;        /* 1 .. TL_MAX_WORKERS - 1; the caller is worker 0 */
    unsigned seen;     /* the generation this thread last answered */
    pthread_t id;
} tl_pool_thread;

struct tl_pool {
    /* The call being run, written by its caller while `open` is 0. */
    tl_range_fn fn;
    void *ctx;
    ptrdiff_t count, grain;
    int workers;                 /* workers of this call, the caller included */
    atomic_ptrdiff_t next;       /* the first chunk nobody has claimed */
    atomic_int open;             /* 1 while threads may join the call */
    atomic_int inside;           /* threads that joined and have not left */
    atomic_uint generation;      /* bumped by every call and by tl_pool_stop */
    atomic_int stop;
    atomic_int sleepers;         /* threads waiting on `wake` */
    atomic_flag busy;            /* held by the call using the pool */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int started;                 /* threads running, workers 1 .. started */
    tl_pool_thread threads[TL_MAX_WORKERS];
};

size_t tl_pool_bytes(void)
{
    return sizeof(tl_pool);
}

tl_status tl_pool_init(tl_pool *pool)
{
    if (pool == NULL)
        return TL_ERR_VALUE;
    memset(pool, 0, sizeof *pool);
    atomic_init(&pool->next, 0);
    atomic_init(&pool->open, 0);
    atomic_init(&pool->inside, 0);
    atomic_init(&pool->generation, 0u);
    atomic_init(&pool->stop, 0);
    atomic_init(&pool->sleepers, 0);
    atomic_flag_clear(&pool->busy);
    if (pthread_mutex_init(&pool->lock, NULL) != 0)
        return TL_ERR_NOMEM;
    if (pthread_cond_init(&pool->wake, NULL) != 0) {
        pthread_mutex_destroy(&pool->lock);
        return TL_ERR_NOMEM;
    }
    return TL_OK;
}

static void claim_ranges(tl_pool *p, int worker)
{
    for (;;) {
        const ptrdiff_t begin = atomic_fetch_add(&p->next, p->grain);
        if (begin >= p->count)
            return;
        const ptrdiff_t end = begin + p->grain < p->count ? begin + p->grain : p->count;
        p->fn(p->ctx, begin, end, worker);
    }
}

/* Waits for the generation to move on from `seen`, asleep. A caller bumps
 * the generation before it reads `sleepers`, and a sleeper counts itself
 * (under the lock) before it reads the generation, so one of the two always
 * sees the other and no wake-up is lost. */
static unsigned wait_for_call(tl_pool *p, unsigned seen)
{
    pthread_mutex_lock(&p->lock);
    atomic_fetch_add(&p->sleepers, 1);
    unsigned g;
    while ((g = atomic_load(&p->generation)) == seen)
        pthread_cond_wait(&p->wake, &p->lock);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->lock);
    return g;
}

static void *pool_thread(void *arg)
{
    tl_pool_thread *self = (tl_pool_thread *)arg;
    tl_pool *p = self->pool;
    for (;;) {
        self->seen = wait_for_call(p, self->seen);
        if (atomic_load(&p->stop))
            return NULL;
        atomic_fetch_add(&p->inside, 1);
        if (atomic_load(&p->open) && self->worker < p->workers)
            claim_ranges(p, self->worker);
        atomic_fetch_sub(&p->inside, 1);
    }
}

/* Starts threads until workers 1 .. want - 1 exist (or one fails to). */
static void start_threads(tl_pool *p, int want)
{
    while (p->started + 1 < want) {
        tl_pool_thread *t = &p->threads[p->started + 1];
        t->pool = p;
        t->worker = p->started + 1;
        t->seen = atomic_load(&p->generation);
        if (pthread_create(&t->id, NULL, pool_thread, t) != 0)
            return; /* fewer workers: they claim its share */
        p->started++;
    }
}

static void wake_sleepers(tl_pool *p)
{
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->lock);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
    }
}

/* Runs the call on the pool; 0 (nothing done) if another call is using it. */
static int pool_run(tl_pool *p, int workers, ptrdiff_t count, tl_range_fn fn, void *ctx)
{
    if (atomic_flag_test_and_set(&p->busy))
        return 0;
    start_threads(p, workers);
    const ptrdiff_t grain = count / ((ptrdiff_t)workers * TL_CLAIMS_PER_WORKER);
    p->fn = fn;
    p->ctx = ctx;
    p->count = count;
    p->grain = grain > 1 ? grain : 1;
    p->workers = workers < p->started + 1 ? workers : p->started + 1;
    atomic_store(&p->next, 0);
    atomic_store(&p->open, 1);
    atomic_fetch_add(&p->generation, 1u);
    wake_sleepers(p);
    claim_ranges(p, 0);
    atomic_store(&p->open, 0);
    while (atomic_load(&p->inside) > 0)
        TL_CPU_RELAX();
    atomic_flag_clear(&p->busy);
    return 1;
}

void tl_pool_stop(tl_pool *pool)
{
    if (pool == NULL)
        return;
    atomic_store(&pool->stop, 1);
    atomic_fetch_add(&pool->generation, 1u);
    pthread_mutex_lock(&pool->lock);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int w = 1; w <= pool->started; w++)
        pthread_join(pool->threads[w].id, NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->lock);
    pool->started = 0;
}

void tl_parallel_ranges(tl_pool *pool, int workers, ptrdiff_t count, tl_range_fn fn, void *ctx)
{
    if (workers > TL_MAX_WORKERS)
        workers = TL_MAX_WORKERS;
    if (workers > count)
        workers = (int)count;
    if (workers > 1) {
        if (pool != NULL && pool_run(pool, workers, count, fn, ctx))
            return;
        tl_pool own;
        if (tl_pool_init(&own) == TL_OK) {
            pool_run(&own, workers, count, fn, ctx);
            tl_pool_stop(&own);
            return;
        }
    }
    fn(ctx, 0, count, 0);
}

#else /* no threads: every call runs on the caller's */

struct tl_pool {
    int unused;
};

size_t tl_pool_bytes(void)
{
    return sizeof(tl_pool);
}

tl_status tl_pool_init(tl_pool *pool)
{
    return pool == NULL ? TL_ERR_VALUE : TL_OK;
}

void tl_pool_stop(tl_pool *pool)
{
    (void)pool;
}

void tl_parallel_ranges(tl_pool *pool, int workers, ptrdiff_t count, tl_range_fn fn, void *ctx)
{
    (void)pool;
    (void)workers;
    fn(ctx, 0, count, 0);
}

#endif
