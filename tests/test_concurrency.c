/*
 * Concurrency, as include/fa3c.h promises it: "a context must be used by one thread at a time;
 * distinct contexts may be used concurrently", and fa3c_last_error() is thread-local.
 *   own contexts  4 threads, each with its own context (and its own copies of the cases' buffers),
 *                 run a list of different shapes round-robin (each thread from another start)
 *                 for $FA3C_CONCURRENCY_SECONDS (default 2; cpu-ref a third of it); every result
 *                 (out, lse, split partials, appended cache: all bytes of their buffers) equals
 *                 the serial result computed beforehand on one context of the same backend.
 *                 On every available backend (cpu at 2 threads per context; GPU backends through
 *                 the test utilities' device mirrors).
 *   shared        4 threads share one context, their calls serialised by a mutex: the same
 *                 results (the documented way of sharing a context).
 *   last_error    an error on one thread is invisible to another, whose successful calls do not
 *                 clear the first thread's message either.
 * Run under ThreadSanitizer in CI (FA3C_TSAN=ON).
 */
#include "testutil.h"

#include "core/internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define THREADS 4
#define NCASES  4

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void make_cases(tu_case *c) {
    tu_case_init(&c[0]); /* batched prefill, GQA, causal */
    c[0].mode = TU_BATCHED, c[0].b = 2, c[0].s_q = 64, c[0].s_k = 150, c[0].h = 4, c[0].h_k = 2;
    c[0].d = c[0].dv = 64, c[0].causal = true, c[0].seed = 31;
    tu_case_init(&c[1]); /* varlen, fp16, local window, sinks */
    c[1].mode = TU_VARLEN, c[1].dtype = FA3C_DTYPE_F16, c[1].b = 3, c[1].s_q = 40, c[1].s_k = 90, c[1].h = 4;
    c[1].h_k = 4, c[1].d = c[1].dv = 128, c[1].wl = 20, c[1].wr = 3, c[1].sinks = FA3C_DTYPE_F32, c[1].seed = 32;
    tu_case_init(&c[2]); /* paged decode with splits into out_accum */
    c[2].mode = TU_KVCACHE, c[2].b = 3, c[2].s_q = 1, c[2].s_k = 400, c[2].h = 8, c[2].h_k = 1;
    c[2].d = c[2].dv = 128, c[2].page_size = 16, c[2].num_splits = 3, c[2].out_accum = true, c[2].seed = 33;
    tu_case_init(&c[3]); /* append with rotary, leftpad, batch index */
    c[3].mode = TU_KVCACHE, c[3].b = 2, c[3].s_q = 4, c[3].s_k = 200, c[3].h = 4, c[3].h_k = 2;
    c[3].d = c[3].dv = 64, c[3].s_new = 4, c[3].rotary = 1, c[3].leftpad = true, c[3].batch_idx = true;
    c[3].causal = true, c[3].seed = 34;
}

/* ----------------------------------------------------------------------------------------- */
/* One case, runnable on one context: its own buffers, its device twins, the bytes it writes */

typedef struct runner {
    tu_prepared   p;
    tu_arena      run;       /* split partials */
    fa3c_fwd_args a;         /* pointers on ctx's device */
    tu_buf       *outs[4];   /* out, lse, out_accum, lse_accum: refilled before each run */
    tu_buf       *cache[2];  /* k, v when appending (idempotent: the same keys land in the same slots) */
    fa3c_context *ctx;
    bool          dev;
} runner;

/* Builds case c for ctx (device twins made there). 0 or -1 (message in msg). */
static int runner_init(runner *r, const tu_case *c, fa3c_context *ctx, char *msg, size_t mn) {
    memset(r, 0, sizeof *r);
    tu_arena_init(&r->run);
    r->ctx = ctx;
    r->dev = fa3c_context_device_type(ctx) != FA3C_DEVICE_CPU;
    if (tu_prepare(c, &r->p) != 0) {
        snprintf(msg, mn, "tu_prepare failed");
        return -1;
    }
    tu_prepared *p = &r->p;
    r->a = p->args;
    if (r->dev && tu_arena_to_device(&p->arena, ctx) != 0) {
        snprintf(msg, mn, "copy to device: %s", fa3c_last_error());
        return -1;
    }
    if (r->dev) tu_args_to_device(&p->arena, &r->run, &r->a, ctx);
    fa3c_fwd_info info;
    if (fa3c_fwd_query(ctx, &r->a, &info) != FA3C_OK) {
        snprintf(msg, mn, "fwd_query: %s", fa3c_last_error());
        return -1;
    }
    fa3c_tensor oacc = {0}, lacc = {0};
    if (c->out_accum && info.num_splits > 1) {
        tu_accum_tensors(&r->run, &p->exact, info.num_splits, &oacc, &lacc);
        if (r->dev && tu_arena_to_device(&r->run, ctx) != 0) {
            snprintf(msg, mn, "copy to device: %s", fa3c_last_error());
            return -1;
        }
        r->a.out_accum = tu_on_device(&r->run, &oacc, ctx);
        r->a.lse_accum = tu_on_device(&r->run, &lacc, ctx);
        r->outs[2] = tu_arena_find(&r->run, oacc.data);
        r->outs[3] = tu_arena_find(&r->run, lacc.data);
    }
    r->outs[0] = tu_arena_find(&p->arena, p->args.out.data);
    if (fa3c_present(&p->args.softmax_lse)) r->outs[1] = tu_arena_find(&p->arena, p->args.softmax_lse.data);
    if (fa3c_present(&p->args.k_new)) {
        r->cache[0] = tu_arena_find(&p->arena, p->args.k.data);
        r->cache[1] = tu_arena_find(&p->arena, p->args.v.data);
    }
    return 0;
}

static void runner_free(runner *r) {
    tu_arena_free(&r->run);
    tu_prepared_free(&r->p);
}

/* The buffers a forward writes, in a fixed order, for comparing. */
static int runner_written(runner *r, tu_buf **w) {
    int n = 0;
    for (int i = 0; i < 4; i++)
        if (r->outs[i]) w[n++] = r->outs[i];
    for (int i = 0; i < 2; i++)
        if (r->cache[i]) w[n++] = r->cache[i];
    return n;
}

/* One forward; the written buffers back on the host. 0 or -1 (message in msg). */
static int runner_run(runner *r, char *msg, size_t mn) {
    for (int i = 0; i < 4; i++) {
        if (!r->outs[i]) continue;
        memset(r->outs[i]->base + TU_GUARD, TU_FILL_OUT, r->outs[i]->bytes);
        if (r->dev && tu_buf_copy(r->ctx, r->outs[i], FA3C_COPY_HOST_TO_DEVICE) != 0) {
            snprintf(msg, mn, "copy to device: %s", fa3c_last_error());
            return -1;
        }
    }
    fa3c_status st = fa3c_fwd(r->ctx, &r->a);
    if (st == FA3C_OK) st = fa3c_context_synchronize(r->ctx);
    if (st != FA3C_OK) {
        snprintf(msg, mn, "fwd: %s: %s", fa3c_status_string(st), fa3c_last_error());
        return -1;
    }
    if (fa3c_last_error()[0] != '\0') {
        snprintf(msg, mn, "a successful fwd left fa3c_last_error() = \"%s\"", fa3c_last_error());
        return -1;
    }
    tu_buf *w[6];
    int n = runner_written(r, w);
    for (int i = 0; i < n; i++)
        if (r->dev && tu_buf_copy(r->ctx, w[i], FA3C_COPY_DEVICE_TO_HOST) != 0) {
            snprintf(msg, mn, "copy from device: %s", fa3c_last_error());
            return -1;
        }
    return 0;
}

/* The serial result of a case: the bytes of its written buffers. */
typedef struct expected {
    uint8_t *bytes[6];
    size_t   len[6];
    int      n;
} expected;

static int capture(runner *r, expected *e) {
    tu_buf *w[6];
    e->n = runner_written(r, w);
    for (int i = 0; i < e->n; i++) {
        e->len[i] = w[i]->bytes + 2 * TU_GUARD;
        e->bytes[i] = malloc(e->len[i]);
        if (!e->bytes[i]) return -1;
        memcpy(e->bytes[i], w[i]->base, e->len[i]);
    }
    return 0;
}

static int matches(runner *r, const expected *e, char *msg, size_t mn) {
    tu_buf *w[6];
    int n = runner_written(r, w);
    if (n != e->n) {
        snprintf(msg, mn, "%d written buffers, the serial run had %d", n, e->n);
        return 0;
    }
    for (int i = 0; i < n; i++)
        if (memcmp(w[i]->base, e->bytes[i], e->len[i]) != 0) {
            size_t at = 0;
            while (w[i]->base[at] == e->bytes[i][at]) at++;
            snprintf(msg, mn, "written buffer %d differs from the serial result at byte %zu", i, at);
            return 0;
        }
    return 1;
}

static void expected_free(expected *e) {
    for (int i = 0; i < e->n; i++) free(e->bytes[i]);
}

/* ----------------------------------------------------------------------------------------- */
/* Threads */

typedef struct shared_state {
    const char     *backend;
    const tu_case  *cases;
    const expected *want;       /* [NCASES] */
    double          seconds;
    fa3c_context   *shared_ctx; /* NULL: each thread makes its own */
    pthread_mutex_t *lock;      /* serialises calls on shared_ctx */
} shared_state;

typedef struct thread_arg {
    const shared_state *s;
    int   index;
    long  runs;
    int   failed;
    char  msg[512];
} thread_arg;

static fa3c_status make_context(const char *backend, fa3c_context **ctx) {
    fa3c_context_options opt;
    fa3c_context_options_init(&opt);
    opt.backend = backend;
    opt.num_threads = 2;
    opt.num_sm = 132;
    return fa3c_context_create(&opt, ctx);
}

static void *worker(void *p) {
    thread_arg *t = p;
    const shared_state *s = t->s;
    fa3c_context *ctx = s->shared_ctx;
    if (!ctx && make_context(s->backend, &ctx) != FA3C_OK) {
        snprintf(t->msg, sizeof t->msg, "context: %s", fa3c_last_error());
        t->failed = 1;
        return NULL;
    }
    runner *r = calloc(NCASES, sizeof *r);
    int ready = 0;
    for (int c = 0; r && c < NCASES && !t->failed; c++) {
        if (s->lock) pthread_mutex_lock(s->lock); /* device twins are made on ctx too */
        if (runner_init(&r[c], &s->cases[c], ctx, t->msg, sizeof t->msg) != 0) t->failed = 1;
        if (s->lock) pthread_mutex_unlock(s->lock);
        ready = c + 1;
    }
    double end = now_s() + s->seconds;
    for (long i = 0; r && !t->failed && (now_s() < end || i < NCASES); i++) {
        int c = (int)((i + t->index) % NCASES);
        if (s->lock) pthread_mutex_lock(s->lock);
        int rc = runner_run(&r[c], t->msg, sizeof t->msg);
        if (s->lock) pthread_mutex_unlock(s->lock);
        if (rc != 0 || !matches(&r[c], &s->want[c], t->msg, sizeof t->msg)) {
            char m[512];
            snprintf(m, sizeof m, "case %d, run %ld: %.450s", c, i, t->msg);
            memcpy(t->msg, m, sizeof m);
            t->failed = 1;
        }
        t->runs++;
    }
    if (!r) t->failed = 1, snprintf(t->msg, sizeof t->msg, "out of memory");
    for (int c = 0; c < ready; c++) {
        if (s->lock) pthread_mutex_lock(s->lock);
        runner_free(&r[c]);
        if (s->lock) pthread_mutex_unlock(s->lock);
    }
    free(r);
    if (!s->shared_ctx) fa3c_context_destroy(ctx);
    return NULL;
}

/* Runs THREADS workers on s; prints and returns the number of failed threads. */
static int run_threads(const shared_state *s, const char *what) {
    pthread_t th[THREADS];
    thread_arg ta[THREADS];
    double t0 = now_s();
    for (int i = 0; i < THREADS; i++) {
        memset(&ta[i], 0, sizeof ta[i]);
        ta[i].s = s;
        ta[i].index = i;
        if (pthread_create(&th[i], NULL, worker, &ta[i]) != 0) {
            ta[i].failed = 1;
            snprintf(ta[i].msg, sizeof ta[i].msg, "pthread_create failed");
        }
    }
    int failed = 0;
    long runs = 0;
    for (int i = 0; i < THREADS; i++) {
        if (!(ta[i].failed && strcmp(ta[i].msg, "pthread_create failed") == 0)) pthread_join(th[i], NULL);
        runs += ta[i].runs;
        if (ta[i].failed) {
            printf("FAIL %s [%s] thread %d: %s\n", what, s->backend, i, ta[i].msg);
            failed++;
        }
    }
    if (!failed)
        printf("ok   %s [%s]: %d threads, %ld forwards in %.1f s, all equal to the serial results\n", what,
               s->backend, THREADS, runs, now_s() - t0);
    return failed;
}

/* ----------------------------------------------------------------------------------------- */
/* fa3c_last_error is per thread */

typedef struct err_arg {
    fa3c_context     *ctx;
    pthread_barrier_t *bar;
    int               failed;
    char              msg[256];
} err_arg;

static void *err_thread_a(void *p) { /* fails, then checks its message survives the other's calls */
    err_arg *e = p;
    fa3c_status st = fa3c_fwd(e->ctx, NULL);
    char mine[1024];
    snprintf(mine, sizeof mine, "%s", fa3c_last_error());
    if (st != FA3C_ERROR_INVALID_ARGUMENT || mine[0] == '\0') {
        e->failed = 1;
        snprintf(e->msg, sizeof e->msg, "fa3c_fwd(ctx, NULL) gave %s, \"%.200s\"", fa3c_status_string(st), mine);
    }
    pthread_barrier_wait(e->bar); /* 1: my error is set */
    pthread_barrier_wait(e->bar); /* 2: the other thread made a good and a bad call */
    if (!e->failed && strcmp(mine, fa3c_last_error()) != 0) {
        e->failed = 1;
        snprintf(e->msg, sizeof e->msg, "my last error changed to \"%.200s\"", fa3c_last_error());
    }
    return NULL;
}

static void *err_thread_b(void *p) { /* sees none of the other's error, and makes its own */
    err_arg *e = p;
    pthread_barrier_wait(e->bar);
    if (fa3c_last_error()[0] != '\0') {
        e->failed = 1;
        snprintf(e->msg, sizeof e->msg, "another thread's error is visible here: \"%.200s\"", fa3c_last_error());
    }
    fa3c_tensor t = {0};
    void *ptr = NULL;
    if (!e->failed && (fa3c_device_alloc(e->ctx, 16, &ptr) != FA3C_OK || fa3c_last_error()[0] != '\0')) {
        e->failed = 1;
        snprintf(e->msg, sizeof e->msg, "a good call failed or left an error: \"%.200s\"", fa3c_last_error());
    }
    fa3c_device_free(e->ctx, ptr);
    if (!e->failed && fa3c_combine(e->ctx, &t, &t, &t, NULL) == FA3C_OK) {
        e->failed = 1;
        snprintf(e->msg, sizeof e->msg, "fa3c_combine of absent tensors succeeded");
    }
    pthread_barrier_wait(e->bar);
    return NULL;
}

static int check_last_error(const char *backend) {
    fa3c_context *ctx;
    if (make_context(backend, &ctx) != FA3C_OK) {
        printf("FAIL last_error [%s]: context: %s\n", backend, fa3c_last_error());
        return 1;
    }
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, 2);
    err_arg a = {ctx, &bar, 0, ""}, b = {ctx, &bar, 0, ""};
    pthread_t ta, tb;
    /* The two threads' calls on ctx never overlap: the barriers order them. */
    pthread_create(&ta, NULL, err_thread_a, &a);
    pthread_create(&tb, NULL, err_thread_b, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_barrier_destroy(&bar);
    fa3c_context_destroy(ctx);
    if (a.failed || b.failed) {
        printf("FAIL last_error [%s]: %s%s\n", backend, a.msg, b.msg);
        return 1;
    }
    printf("ok   last_error [%s]: thread-local\n", backend);
    return 0;
}

/* ----------------------------------------------------------------------------------------- */

int main(void) {
    const char *env = getenv("FA3C_CONCURRENCY_SECONDS");
    double seconds = env && atof(env) > 0 ? atof(env) : 2.0;
    tu_case cases[NCASES];
    make_cases(cases);
    for (int c = 0; c < NCASES; c++) tu_case_describe(&cases[c], "");
    int failed = 0, passed = 0, skipped = 0;
    for (int bi = 0; bi < fa3c_backend_count(); bi++) {
        const char *name = fa3c_backend_name(bi);
        if (!fa3c_backend_available(bi)) {
            printf("skip [%s]: not available\n", name);
            skipped++;
            continue;
        }
        /* The serial results, on one context. */
        fa3c_context *ctx;
        if (make_context(name, &ctx) != FA3C_OK) {
            printf("FAIL [%s]: context: %s\n", name, fa3c_last_error());
            failed++;
            continue;
        }
        expected want[NCASES];
        memset(want, 0, sizeof want);
        int bad = 0;
        for (int c = 0; c < NCASES && !bad; c++) {
            runner r;
            char msg[512] = "";
            tu_report rep;
            if (runner_init(&r, &cases[c], ctx, msg, sizeof msg) != 0 || runner_run(&r, msg, sizeof msg) != 0 ||
                capture(&r, &want[c]) != 0) {
                printf("FAIL serial %s [%s]: %s\n", cases[c].name, name, msg);
                bad = 1;
            } else if (tu_run(ctx, &r.p, TU_RULE_FA3, &rep) != TU_PASS) { /* the serial result is right */
                printf("FAIL serial %s [%s]: %s\n", cases[c].name, name, rep.msg);
                bad = 1;
            }
            runner_free(&r);
        }
        if (!bad) {
            shared_state s = {name, cases, want, strcmp(name, "cpu-ref") == 0 ? seconds / 3 : seconds, NULL, NULL};
            int f = run_threads(&s, "own contexts");
            pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
            s.shared_ctx = ctx;
            s.lock = &lock;
            s.seconds /= 2;
            f += run_threads(&s, "one shared context, serialised");
            f += check_last_error(name);
            bad = f > 0;
        }
        for (int c = 0; c < NCASES; c++) expected_free(&want[c]);
        fa3c_context_destroy(ctx);
        if (bad) failed++;
        else passed++;
    }
    printf("test_concurrency: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
