/*
 * A small fork-join thread pool owned by a context. run() publishes one job; the caller and the
 * workers claim items from an atomic counter, so uneven items (varlen batches) balance, and run()
 * returns when every item has finished. One run() at a time (a context is single-threaded).
 */
#include "core/internal.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

struct fa3c_threadpool {
    int             num_threads; /* including the caller */
    pthread_t      *workers;     /* num_threads - 1 */
    pthread_mutex_t mutex;
    pthread_cond_t  wake, done;
    uint64_t        generation;  /* bumped for each job (and for shutdown) */
    int             busy;        /* workers still inside the current job */
    bool            shutdown;
    /* the current job */
    fa3c_task_fn    fn;
    void           *arg;
    int64_t         n;
    atomic_llong    next;
};

typedef struct { fa3c_threadpool *pool; int index; } worker_arg;

static void run_items(fa3c_threadpool *pool, int thread) {
    for (;;) {
        int64_t item = atomic_fetch_add(&pool->next, 1);
        if (item >= pool->n) return;
        pool->fn(pool->arg, item, thread);
    }
}

static void *worker_main(void *p) {
    worker_arg wa = *(worker_arg *)p;
    free(p);
    fa3c_threadpool *pool = wa.pool;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool->mutex);
    for (;;) {
        while (pool->generation == seen) pthread_cond_wait(&pool->wake, &pool->mutex);
        seen = pool->generation;
        if (pool->shutdown) break;
        pthread_mutex_unlock(&pool->mutex);
        run_items(pool, wa.index);
        pthread_mutex_lock(&pool->mutex);
        if (--pool->busy == 0) pthread_cond_signal(&pool->done);
    }
    pthread_mutex_unlock(&pool->mutex);
    return NULL;
}

static void stop_workers(fa3c_threadpool *pool, int started) {
    pthread_mutex_lock(&pool->mutex);
    pool->shutdown = true;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 0; i < started; i++) pthread_join(pool->workers[i], NULL);
}

static void free_pool(fa3c_threadpool *pool) {
    pthread_cond_destroy(&pool->done);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mutex);
    free(pool->workers);
    free(pool);
}

fa3c_status fa3c_threadpool_create(int num_threads, fa3c_threadpool **out) {
    if (num_threads < 1) num_threads = 1;
    fa3c_threadpool *pool = calloc(1, sizeof *pool);
    if (!pool) return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "thread pool: out of memory");
    pool->num_threads = num_threads;
    pool->workers = calloc((size_t)num_threads, sizeof *pool->workers);
    if (!pool->workers) {
        free(pool);
        return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "thread pool: out of memory");
    }
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    for (int i = 0; i < num_threads - 1; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa) {
            wa->pool = pool;
            wa->index = i + 1;
        }
        if (!wa || pthread_create(&pool->workers[i], NULL, worker_main, wa) != 0) {
            free(wa);
            stop_workers(pool, i);
            free_pool(pool);
            return fa3c_fail(FA3C_ERROR_INTERNAL, "thread pool: cannot start %d threads", num_threads);
        }
    }
    *out = pool;
    return FA3C_OK;
}

void fa3c_threadpool_destroy(fa3c_threadpool *pool) {
    if (!pool) return;
    stop_workers(pool, pool->num_threads - 1);
    free_pool(pool);
}

int fa3c_threadpool_size(const fa3c_threadpool *pool) { return pool->num_threads; }

void fa3c_threadpool_run(fa3c_threadpool *pool, int64_t n, fa3c_task_fn fn, void *arg) {
    if (n <= 0) return;
    pool->fn = fn;
    pool->arg = arg;
    pool->n = n;
    atomic_store(&pool->next, 0);
    if (pool->num_threads == 1 || n == 1) {
        run_items(pool, 0);
        return;
    }
    pthread_mutex_lock(&pool->mutex);
    pool->busy = pool->num_threads - 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    run_items(pool, 0);
    pthread_mutex_lock(&pool->mutex);
    while (pool->busy > 0) pthread_cond_wait(&pool->done, &pool->mutex);
    pthread_mutex_unlock(&pool->mutex);
}

int fa3c_available_cores(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    return 1;
}

int64_t fa3c_item_owner(const int64_t *start, int64_t n, int64_t item) {
    int64_t lo = 0, hi = n; /* start[lo] <= item < start[hi] (start[n] read as +infinity) */
    while (hi - lo > 1) {
        int64_t mid = (lo + hi) / 2;
        if (start[mid] <= item) lo = mid;
        else hi = mid;
    }
    return lo;
}
