/*
 * `fa3c demo`: a small serving trace on the best available backend.
 *
 * R requests with random prompt lengths 1..max_len share a paged bf16 KV cache (h_k kv heads,
 * head dim d, page size P, pages handed out in random order). Prefill runs every prompt in one
 * varlen kvcache call that appends the prompt's K/V into the cache (cu_seqlens_k_new) and attends
 * causally; each decode step then appends one token per request and attends over the whole cache.
 * Sampled output rows are checked against a float64 attention over the demo's own copy of the
 * keys and values, computed here independently of any backend. Buffers live on the context's
 * device (fa3c_device_alloc/copy: host memory for CPU backends, GPU memory for cuda); only the
 * forward calls are timed.
 */
#include "tools/tools.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct demo_opts {
    int         requests, max_len, steps, page_size, h, h_k, d;
    uint64_t    seed;
    const char *backend;
} demo_opts;

typedef struct demo_state {
    demo_opts o;
    int       num_pages, max_pages;
    fa3c_context *ctx;
    int32_t  *lens;       /* (R,) tokens cached per request (host) */
    int32_t  *page_table; /* (R, max_pages) (host) */
    void     *dev_lens, *dev_page_table, *dev_k_cache, *dev_v_cache; /* on the context's device;
                                                                       caches (num_pages, P, h_k, d) bf16 */
    float   **k_mirror, **v_mirror; /* per request (capacity, h_k, d): the demo's own copy */
    double    max_err;
    int       checked;
} demo_state;

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float rng_uniform(uint64_t *s) { return (float)((rng_next(s) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* Random bf16 values in [-1, 1); also returned as floats in mirror (n,) when not NULL. */
static void fill_bf16(uint16_t *x, float *mirror, int64_t n, uint64_t *rng) {
    for (int64_t i = 0; i < n; i++) {
        x[i] = fa3c_f32_to_bf16(rng_uniform(rng));
        if (mirror) mirror[i] = fa3c_bf16_to_f32(x[i]);
    }
}

/* A contiguous tensor on ctx's device (the demo uses device 0). */
static fa3c_tensor tensor(fa3c_context *ctx, void *data, fa3c_dtype dt, int nd, int64_t a, int64_t b, int64_t c,
                          int64_t d) {
    int64_t shape[4] = {a, b, c, d};
    fa3c_tensor t = fa3c_tensor_contiguous(data, dt, nd, shape);
    t.device_type = fa3c_context_device_type(ctx);
    return t;
}

/* A device copy of host[0..bytes), or NULL (message printed). */
static void *to_device(fa3c_context *ctx, const void *host, size_t bytes) {
    void *dev = NULL;
    if (fa3c_device_alloc(ctx, bytes, &dev) != FA3C_OK ||
        fa3c_device_copy(ctx, dev, host, bytes, FA3C_COPY_HOST_TO_DEVICE) != FA3C_OK) {
        fprintf(stderr, "fa3c demo: device buffer of %zu bytes: %s\n", bytes, fa3c_last_error());
        fa3c_device_free(ctx, dev);
        return NULL;
    }
    return dev;
}

/*
 * Checks out row (h,) for query q_row (h, d) of request r attending its first n_keys mirrored keys
 * (causal prefix). q_row/out_row are bf16 of one token: (h, d) and (h, d).
 */
static void check_row(demo_state *st, int r, const uint16_t *q_row, const uint16_t *out_row, int64_t n_keys, int head) {
    const demo_opts *o = &st->o;
    int kvh = head / (o->h / o->h_k);
    double scale = 1.0 / sqrt((double)o->d), m = -INFINITY, l = 0;
    double *s = malloc((size_t)n_keys * sizeof *s), *acc = calloc((size_t)o->d, sizeof *acc);
    for (int64_t j = 0; j < n_keys; j++) {
        const float *k = st->k_mirror[r] + (j * o->h_k + kvh) * o->d;
        double dot = 0;
        for (int e = 0; e < o->d; e++) dot += fa3c_bf16_to_f32(q_row[head * o->d + e]) * (double)k[e];
        s[j] = dot * scale;
        if (s[j] > m) m = s[j];
    }
    for (int64_t j = 0; j < n_keys; j++) {
        double p = exp(s[j] - m);
        l += p;
        const float *v = st->v_mirror[r] + (j * o->h_k + kvh) * o->d;
        for (int e = 0; e < o->d; e++) acc[e] += p * v[e];
    }
    for (int e = 0; e < o->d; e++) {
        double err = fabs(fa3c_bf16_to_f32(out_row[head * o->d + e]) - acc[e] / l);
        if (err > st->max_err) st->max_err = err;
    }
    st->checked++;
    free(s);
    free(acc);
}

static int parse(int argc, char **argv, demo_opts *o) {
    *o = (demo_opts){.requests = 16, .max_len = 1024, .steps = 8, .page_size = 64, .h = 32, .h_k = 8, .d = 128,
                     .seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int *field = !strcmp(a, "--requests") ? &o->requests : !strcmp(a, "--max-len") ? &o->max_len
                   : !strcmp(a, "--steps") ? &o->steps : !strcmp(a, "--page-size") ? &o->page_size : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: fa3c demo [--requests N=16] [--max-len N=1024] [--steps N=8] [--page-size N=64]\n"
                   "                 [--seed N=1] [--backend NAME]\n");
            return 1;
        }
        if (!v) {
            fprintf(stderr, "fa3c demo: %s needs a value\n", a);
            return 2;
        }
        if (field) *field = atoi(v);
        else if (!strcmp(a, "--seed")) o->seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--backend")) o->backend = v;
        else {
            fprintf(stderr, "fa3c demo: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    if (o->requests < 1 || o->max_len < 1 || o->steps < 0 || o->page_size < 1) {
        fprintf(stderr, "fa3c demo: --requests, --max-len and --page-size must be >= 1, --steps >= 0\n");
        return 2;
    }
    return 0;
}

/* Paged cache with each request's pages in random order; mirrors sized for prompt + steps.
 * Returns false when a device buffer cannot be made. */
static bool setup_cache(demo_state *st, uint64_t *rng) {
    const demo_opts *o = &st->o;
    st->max_pages = (o->max_len + o->steps + o->page_size - 1) / o->page_size;
    st->num_pages = o->requests * st->max_pages;
    int32_t *perm = malloc((size_t)st->num_pages * sizeof *perm);
    for (int i = 0; i < st->num_pages; i++) perm[i] = i;
    for (int i = st->num_pages - 1; i > 0; i--) {
        int j = (int)(rng_next(rng) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    st->page_table = perm; /* row r = pages r*max_pages .. of the permutation */
    size_t cache = (size_t)st->num_pages * o->page_size * o->h_k * o->d * sizeof(uint16_t);
    uint16_t *zeros = calloc(cache, 1);
    st->lens = calloc((size_t)o->requests, sizeof *st->lens);
    st->k_mirror = malloc((size_t)o->requests * sizeof *st->k_mirror);
    st->v_mirror = malloc((size_t)o->requests * sizeof *st->v_mirror);
    size_t per_req = (size_t)(o->max_len + o->steps) * o->h_k * o->d;
    for (int r = 0; r < o->requests; r++) {
        st->k_mirror[r] = malloc(per_req * sizeof(float));
        st->v_mirror[r] = malloc(per_req * sizeof(float));
    }
    st->dev_k_cache = to_device(st->ctx, zeros, cache);
    st->dev_v_cache = to_device(st->ctx, zeros, cache);
    st->dev_page_table = to_device(st->ctx, perm, (size_t)st->num_pages * sizeof *perm);
    st->dev_lens = to_device(st->ctx, st->lens, (size_t)o->requests * sizeof *st->lens);
    free(zeros);
    return st->dev_k_cache && st->dev_v_cache && st->dev_page_table && st->dev_lens;
}

static void free_state(demo_state *st) {
    for (int r = 0; r < st->o.requests; r++) {
        free(st->k_mirror[r]);
        free(st->v_mirror[r]);
    }
    free(st->k_mirror);
    free(st->v_mirror);
    fa3c_device_free(st->ctx, st->dev_k_cache);
    fa3c_device_free(st->ctx, st->dev_v_cache);
    fa3c_device_free(st->ctx, st->dev_page_table);
    fa3c_device_free(st->ctx, st->dev_lens);
    free(st->lens);
    free(st->page_table);
}

/* One call's fresh tokens: q/out (tokens, h, d), k_new/v_new (tokens, h_k, d) bf16, and the new
 * keys and values as floats for the mirror. */
typedef struct step_buffers {
    uint16_t *q, *out, *k_new, *v_new;
    float    *k_f32, *v_f32;
} step_buffers;

static void step_alloc(const demo_opts *o, int64_t tokens, uint64_t *rng, step_buffers *sb) {
    int64_t qn = tokens * o->h * o->d, kn = tokens * o->h_k * o->d;
    sb->q = malloc(qn * 2), sb->out = malloc(qn * 2), sb->k_new = malloc(kn * 2), sb->v_new = malloc(kn * 2);
    sb->k_f32 = malloc(kn * sizeof(float)), sb->v_f32 = malloc(kn * sizeof(float));
    fill_bf16(sb->q, NULL, qn, rng);
    fill_bf16(sb->k_new, sb->k_f32, kn, rng);
    fill_bf16(sb->v_new, sb->v_f32, kn, rng);
}

static void step_free(step_buffers *sb) {
    free(sb->q), free(sb->out), free(sb->k_new), free(sb->v_new), free(sb->k_f32), free(sb->v_f32);
}

/* Copies `tokens` new key/value rows (from token `from` of sb) into request r's mirror at its end. */
static void mirror_append(demo_state *st, int r, const step_buffers *sb, int64_t from, int64_t tokens) {
    size_t row = (size_t)st->o.h_k * st->o.d;
    memcpy(st->k_mirror[r] + st->lens[r] * row, sb->k_f32 + from * row, tokens * row * sizeof(float));
    memcpy(st->v_mirror[r] + st->lens[r] * row, sb->v_f32 + from * row, tokens * row * sizeof(float));
    st->lens[r] += (int32_t)tokens;
}

/*
 * Runs one forward over sb's tokens on the context's device: prefill when cu (R + 1,) is given
 * (varlen q and k_new, (tokens, h|h_k, d)), else one decode token per request ((R, 1, h|h_k, d)).
 * The cache, page table and lengths are the state's; sb->out receives the output. Returns the
 * seconds the forward took (synchronised), or < 0 on error.
 */
static double run_step(demo_state *st, step_buffers *sb, int64_t tokens, const int32_t *cu, int max_q) {
    fa3c_context *ctx = st->ctx;
    const demo_opts *o = &st->o;
    int R = o->requests;
    size_t qb = (size_t)tokens * o->h * o->d * 2, kb = (size_t)tokens * o->h_k * o->d * 2;
    void *q = to_device(ctx, sb->q, qb), *kn = to_device(ctx, sb->k_new, kb), *vn = to_device(ctx, sb->v_new, kb);
    void *out = to_device(ctx, sb->out, qb), *dcu = cu ? to_device(ctx, cu, (size_t)(R + 1) * sizeof *cu) : NULL;
    double dt = -1;
    if (q && kn && vn && out && (dcu || !cu) &&
        fa3c_device_copy(ctx, st->dev_lens, st->lens, (size_t)R * sizeof *st->lens, FA3C_COPY_HOST_TO_DEVICE) ==
            FA3C_OK) {
        fa3c_fwd_args a;
        fa3c_fwd_args_init(&a);
        a.k = tensor(ctx, st->dev_k_cache, FA3C_DTYPE_BF16, 4, st->num_pages, o->page_size, o->h_k, o->d);
        a.v = tensor(ctx, st->dev_v_cache, FA3C_DTYPE_BF16, 4, st->num_pages, o->page_size, o->h_k, o->d);
        a.page_table = tensor(ctx, st->dev_page_table, FA3C_DTYPE_I32, 2, R, st->max_pages, 0, 0);
        a.seqused_k = tensor(ctx, st->dev_lens, FA3C_DTYPE_I32, 1, R, 0, 0, 0);
        a.is_causal = 1;
        if (cu) {
            a.q = tensor(ctx, q, FA3C_DTYPE_BF16, 3, tokens, o->h, o->d, 0);
            a.k_new = tensor(ctx, kn, FA3C_DTYPE_BF16, 3, tokens, o->h_k, o->d, 0);
            a.v_new = tensor(ctx, vn, FA3C_DTYPE_BF16, 3, tokens, o->h_k, o->d, 0);
            a.out = tensor(ctx, out, FA3C_DTYPE_BF16, 3, tokens, o->h, o->d, 0);
            a.cu_seqlens_q = tensor(ctx, dcu, FA3C_DTYPE_I32, 1, R + 1, 0, 0, 0);
            a.cu_seqlens_k_new = a.cu_seqlens_q;
            a.max_seqlen_q = max_q;
        } else {
            a.q = tensor(ctx, q, FA3C_DTYPE_BF16, 4, R, 1, o->h, o->d);
            a.k_new = tensor(ctx, kn, FA3C_DTYPE_BF16, 4, R, 1, o->h_k, o->d);
            a.v_new = tensor(ctx, vn, FA3C_DTYPE_BF16, 4, R, 1, o->h_k, o->d);
            a.out = tensor(ctx, out, FA3C_DTYPE_BF16, 4, R, 1, o->h, o->d);
        }
        double t0 = now_s();
        fa3c_status s = fa3c_fwd(ctx, &a);
        if (s == FA3C_OK) s = fa3c_context_synchronize(ctx);
        double t1 = now_s();
        if (s == FA3C_OK) s = fa3c_device_copy(ctx, sb->out, out, qb, FA3C_COPY_DEVICE_TO_HOST);
        if (s == FA3C_OK) dt = t1 - t0;
        else fprintf(stderr, "fa3c demo: %s failed: %s: %s\n", cu ? "prefill" : "decode", fa3c_status_string(s),
                     fa3c_last_error());
    }
    fa3c_device_free(ctx, q), fa3c_device_free(ctx, kn), fa3c_device_free(ctx, vn);
    fa3c_device_free(ctx, out), fa3c_device_free(ctx, dcu);
    return dt;
}

/* Prefill: one varlen call over all prompts, appending them to the cache. Seconds, or < 0. */
static double prefill(demo_state *st, const int32_t *prompt, uint64_t *rng) {
    const demo_opts *o = &st->o;
    int R = o->requests, max_q = 0;
    int32_t *cu = malloc((size_t)(R + 1) * sizeof *cu);
    cu[0] = 0;
    for (int r = 0; r < R; r++) {
        cu[r + 1] = cu[r] + prompt[r];
        if (prompt[r] > max_q) max_q = prompt[r];
    }
    step_buffers sb;
    step_alloc(o, cu[R], rng, &sb);
    double dt = run_step(st, &sb, cu[R], cu, max_q);
    if (dt >= 0) {
        for (int r = 0; r < R; r++) mirror_append(st, r, &sb, cu[r], prompt[r]);
        for (int c = 0; c < 24; c++) { /* token t of a prompt sees keys 0..t */
            int r = (int)(rng_next(rng) % (uint64_t)R), t = (int)(rng_next(rng) % (uint64_t)prompt[r]);
            int head = (int)(rng_next(rng) % (uint64_t)o->h);
            int64_t tok = cu[r] + t;
            check_row(st, r, sb.q + tok * o->h * o->d, sb.out + tok * o->h * o->d, t + 1, head);
        }
    }
    free(cu);
    step_free(&sb);
    return dt;
}

/* One decode step: every request appends one token and attends over its whole cache. */
static double decode_step(demo_state *st, uint64_t *rng) {
    const demo_opts *o = &st->o;
    int R = o->requests;
    step_buffers sb;
    step_alloc(o, R, rng, &sb);
    double dt = run_step(st, &sb, R, NULL, 1);
    if (dt >= 0) {
        for (int r = 0; r < R; r++) mirror_append(st, r, &sb, r, 1);
        for (int c = 0; c < 4; c++) {
            int r = (int)(rng_next(rng) % (uint64_t)R), head = (int)(rng_next(rng) % (uint64_t)o->h);
            check_row(st, r, sb.q + (int64_t)r * o->h * o->d, sb.out + (int64_t)r * o->h * o->d, st->lens[r], head);
        }
    }
    step_free(&sb);
    return dt;
}

int fa3c_cmd_demo(int argc, char **argv) {
    demo_state st;
    memset(&st, 0, sizeof st);
    int rc = parse(argc, argv, &st.o);
    if (rc) return rc == 1 ? 0 : rc;
    const demo_opts *o = &st.o;
    fa3c_context_options opt;
    fa3c_context_options_init(&opt);
    opt.backend = o->backend;
    fa3c_context *ctx;
    if (fa3c_context_create(&opt, &ctx) != FA3C_OK) {
        fprintf(stderr, "fa3c demo: %s\n", fa3c_last_error());
        return 1;
    }
    uint64_t rng = o->seed;
    int32_t *prompt = malloc((size_t)o->requests * sizeof *prompt);
    int64_t total = 0;
    for (int r = 0; r < o->requests; r++) total += prompt[r] = 1 + (int)(rng_next(&rng) % (uint64_t)o->max_len);
    st.ctx = ctx;
    bool ok = setup_cache(&st, &rng);
    printf("fa3c demo: backend %s (%d threads), %d requests, prompts 1..%d tokens (%lld in all), "
           "GQA %d/%d heads, d=%d, bf16, paged KV page %d\n",
           fa3c_context_backend(ctx), fa3c_context_num_threads(ctx), o->requests, o->max_len, (long long)total, o->h,
           o->h_k, o->d, o->page_size);

    double t_pre = ok ? prefill(&st, prompt, &rng) : -1, t_dec = 0;
    ok = t_pre >= 0;
    if (ok) printf("prefill: %lld tokens in %.3f s -> %.0f tokens/s\n", (long long)total, t_pre, total / t_pre);
    for (int s = 0; ok && s < o->steps; s++) {
        double dt = decode_step(&st, &rng);
        ok = dt >= 0;
        t_dec += dt;
    }
    if (ok && o->steps > 0)
        printf("decode : %d steps x %d requests in %.3f s -> %.0f tokens/s (%.1f ms per step)\n", o->steps,
               o->requests, t_dec, o->steps * o->requests / t_dec, 1e3 * t_dec / o->steps);
    const double bound = 1e-2; /* ~1 bf16 ulp at |out| <= 1: the backend's single rounding of out */
    if (ok) {
        printf("check  : %d sampled rows vs a float64 attention, max |err| %.5f (bound %.3f)\n", st.checked,
               st.max_err, bound);
        ok = st.max_err <= bound;
    }
    printf("%s\n", ok ? "OK" : "FAIL");
    free(prompt);
    free_state(&st);
    fa3c_context_destroy(ctx);
    return ok ? 0 : 1;
}
