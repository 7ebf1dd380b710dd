/*
 * `fa3c bench`: forward throughput on a backend, with the machine's own anchors measured in the
 * same run.
 *
 *   probes   the cores' FMA peak (a register-only loop of independent fp32 FMAs on every thread,
 *            at the widest vector width the CPU has; also the AVX512-BF16 dot product where
 *            present) and the memory bandwidth (a large memcpy split over the threads).
 *   prefill  b = 1, 8 q heads / 8 kv heads, d = 128, s_q = s_k = 512 .. 4096, causal and not,
 *            bf16 and fp16. GFLOP/s with FA3's count 4 b h s_q s_k d (halved when causal), and
 *            its fraction of the peak of the instructions the dtype runs on (fp16: fp32 FMA;
 *            bf16: the BF16 dot product where the CPU has one).
 *   decode   bf16, 32 q heads / 8 kv heads, d = 128, one query per sequence, batch 1 / 8 / 32,
 *            KV 1k .. 32k in a paged cache (page 16, pages in random order). K/V bytes read per
 *            second, against the memcpy bandwidth (bytes copied per second) of copies timed
 *            between the calls. Caches are flushed before every timed call, so the KV is read
 *            from memory.
 *   scaling  prefill bf16 at 2k on 1 thread and on all threads.
 *
 * Times are the best of repeated calls (other load on a shared machine only slows calls down; the
 * anchors are taken the same way). Results go to stdout and, with --csv FILE, to a CSV file
 * (bench/cpu_bench.py reads it and adds torch's CPU attention on the same shapes).
 */
#include "tools/tools.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BENCH_X86 1
#endif

typedef struct bench_opts {
    const char *backend, *csv, *only;
    int         threads;
    double      min_time;   /* seconds of timed calls per shape */
    double      max_gb;     /* skip decode shapes whose KV cache exceeds this */
    bool        quick;
} bench_opts;

struct probe_job;

typedef struct bench_out {
    FILE            *csv;
    double           fma_peak, bf16_peak, memcpy_gbs; /* GFLOP/s, GFLOP/s, GB/s */
    fa3c_threadpool *pool;                             /* the probes' threads (as many as the context's) */
    struct probe_job *copy;                            /* the memcpy probe's buffers */
} bench_out;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ----------------------------------------------------------------------------------------- */
/* Probes */

#define PROBE_ITERS 4000000

#ifdef BENCH_X86

/* fp32 FMAs of 12 independent accumulators (FLOPs returned); the result is kept alive via sink. */
__attribute__((target("avx512f"))) static double fma_loop_avx512(float *sink) {
    __m512 acc[12], x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-6f);
    for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_ps((float)i);
    for (int64_t it = 0; it < PROBE_ITERS; it++)
        for (int i = 0; i < 12; i++) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
    for (int i = 1; i < 12; i++) acc[0] = _mm512_add_ps(acc[0], acc[i]);
    *sink = _mm512_reduce_add_ps(acc[0]);
    return 12.0 * 16 * 2 * PROBE_ITERS;
}

__attribute__((target("avx512f,avx512bf16"))) static double bf16_loop_avx512(float *sink) {
    __m512 acc[12];
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3F7F3F7F);
    for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_ps((float)i);
    for (int64_t it = 0; it < PROBE_ITERS; it++)
        for (int i = 0; i < 12; i++) acc[i] = _mm512_dpbf16_ps(acc[i], x, x);
    for (int i = 1; i < 12; i++) acc[0] = _mm512_add_ps(acc[0], acc[i]);
    *sink = _mm512_reduce_add_ps(acc[0]);
    return 12.0 * 32 * 2 * PROBE_ITERS;
}

__attribute__((target("avx2,fma"))) static double fma_loop_avx2(float *sink) {
    __m256 acc[12], x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-6f);
    for (int i = 0; i < 12; i++) acc[i] = _mm256_set1_ps((float)i);
    for (int64_t it = 0; it < PROBE_ITERS; it++)
        for (int i = 0; i < 12; i++) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
    for (int i = 1; i < 12; i++) acc[0] = _mm256_add_ps(acc[0], acc[i]);
    float f[8];
    _mm256_storeu_ps(f, acc[0]);
    *sink = f[0];
    return 12.0 * 8 * 2 * PROBE_ITERS;
}
#endif

typedef struct probe_job {
    int    kind; /* 0 fp32 FMA avx512, 1 fp32 FMA avx2, 2 bf16 dot, 3 memcpy */
    double flops[256];
    float  sink[256];
    char  *src, *dst;
    size_t bytes;
    int    threads;
} probe_job;

static void probe_item(void *arg, int64_t item, int thread) {
    (void)thread;
    probe_job *j = arg;
    if (j->kind == 3) {
        size_t chunk = j->bytes / (size_t)j->threads, at = chunk * (size_t)item;
        memcpy(j->dst + at, j->src + at, chunk);
        return;
    }
#ifdef BENCH_X86
    j->flops[item] = j->kind == 0   ? fma_loop_avx512(&j->sink[item])
                     : j->kind == 1 ? fma_loop_avx2(&j->sink[item])
                                    : bf16_loop_avx512(&j->sink[item]);
#endif
}

/* GFLOP/s of all threads running the loop at once (best of 8: other load only lowers it). */
static double run_flops_probe(fa3c_threadpool *pool, int kind) {
    probe_job *j = calloc(1, sizeof *j);
    j->kind = kind;
    int n = fa3c_threadpool_size(pool);
    double best = 0;
    for (int rep = 0; rep < 8; rep++) {
        double t = now_s();
        fa3c_threadpool_run(pool, n, probe_item, j);
        t = now_s() - t;
        double f = 0;
        for (int i = 0; i < n; i++) f += j->flops[i];
        if (f / t > best) best = f / t;
    }
    free(j);
    return best * 1e-9;
}

/* The memcpy probe: 256 MiB copied, split over the threads. */
static probe_job *memcpy_probe_new(fa3c_threadpool *pool) {
    probe_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->kind = 3;
    j->threads = fa3c_threadpool_size(pool);
    j->bytes = (size_t)256 << 20;
    j->src = malloc(j->bytes);
    j->dst = malloc(j->bytes);
    if (!j->src || !j->dst) {
        free(j->src), free(j->dst), free(j);
        return NULL;
    }
    memset(j->src, 1, j->bytes);
    memset(j->dst, 2, j->bytes);
    return j;
}

static void memcpy_probe_free(probe_job *j) {
    if (!j) return;
    free(j->src), free(j->dst), free(j);
}

/* Seconds of one copy. */
static double memcpy_probe_once(fa3c_threadpool *pool, probe_job *j) {
    double t = now_s();
    fa3c_threadpool_run(pool, j->threads, probe_item, j);
    return now_s() - t;
}

/* ----------------------------------------------------------------------------------------- */
/* Timing */

typedef struct flusher {
    char  *buf;
    size_t bytes;
} flusher;

/* Evicts the caches: a store into every cache line of a buffer larger than the last-level
 * cache. Plain stores, not memset: a large memset may use stores that bypass the caches (glibc's
 * rep stosb does on some CPUs), which leaves the data to be flushed where it was. */
static void flush_caches(flusher *f) {
    if (!f->buf) return;
    volatile char *b = f->buf;
    char v = (char)((int)(now_s() * 1e3) & 0x7F);
    for (size_t i = 0; i < f->bytes; i += 64) b[i] = v;
}

/* Best (least) seconds of fa3c_fwd(ctx, a) over repeated calls (at least 3, until min_time has
 * passed): on a shared machine other load only ever slows a call down. With copy, a memcpy probe
 * runs between the calls and *copy_s receives its best seconds, so that the two are measured
 * under the same conditions. */
static double time_fwd(fa3c_context *ctx, const fa3c_fwd_args *a, double min_time, flusher *flush,
                       fa3c_threadpool *pool, probe_job *copy, double *copy_s, bool *ok) {
    double t[64], c[64];
    int n = 0;
    double total = 0;
    *ok = fa3c_fwd(ctx, a) == FA3C_OK; /* warm-up: workspace, page faults */
    if (!*ok) return 0;
    while (n < 64 && (n < 3 || total < min_time)) {
        if (copy) c[n] = memcpy_probe_once(pool, copy);
        flush_caches(flush);
        double t0 = now_s();
        fa3c_fwd(ctx, a);
        t[n] = now_s() - t0;
        total += t[n++];
    }
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    if (copy) {
        qsort(c, (size_t)n, sizeof c[0], cmp_double);
        *copy_s = c[0];
    }
    return t[0];
}

/* ----------------------------------------------------------------------------------------- */
/* Shapes */

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* n elements of dtype (2 bytes): a 4096-element block of N(0,1)-ish values, repeated. */
static void fill16(uint16_t *x, fa3c_dtype dt, int64_t n, uint64_t *rng) {
    int64_t block = n < 4096 ? n : 4096;
    for (int64_t i = 0; i < block; i++) {
        float u = (float)((rng_next(rng) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
        x[i] = dt == FA3C_DTYPE_BF16 ? fa3c_f32_to_bf16(u) : fa3c_f32_to_f16(u);
    }
    for (int64_t i = block; i < n; i += block) memcpy(x + i, x, (size_t)(n - i < block ? n - i : block) * 2);
}

static void csv_row(bench_out *out, const char *section, fa3c_dtype dt, int64_t b, int64_t h, int64_t h_k, int64_t d,
                    int64_t s_q, int64_t s_k, int causal, int64_t page, int threads, double sec, double gflops,
                    double gbps, double memcpy_gbps, double pct_peak, double ratio) {
    if (!out->csv) return;
    fprintf(out->csv, "%s,%s,%lld,%lld,%lld,%lld,%lld,%lld,%d,%lld,%d,%.4f,%.2f,%.2f,%.2f,%.1f,%.3f\n", section,
            fa3c_dtype_name(dt), (long long)b, (long long)h, (long long)h_k, (long long)d, (long long)s_q,
            (long long)s_k, causal, (long long)page, threads, sec * 1e3, gflops, gbps, memcpy_gbps, pct_peak, ratio);
    fflush(out->csv);
}

/* One prefill shape (b 1, h = h_k = 8, d 128, s_q = s_k = s); GFLOP/s, or < 0 on error. */
static double prefill(fa3c_context *ctx, const bench_opts *o, fa3c_dtype dt, int64_t s, bool causal) {
    const int64_t b = 1, h = 8, d = 128;
    int64_t n = b * s * h * d;
    uint16_t *q = malloc((size_t)n * 2), *k = malloc((size_t)n * 2), *v = malloc((size_t)n * 2);
    uint16_t *out = malloc((size_t)n * 2);
    double gflops = -1;
    if (q && k && v && out) {
        uint64_t rng = 1;
        fill16(q, dt, n, &rng);
        fill16(k, dt, n, &rng);
        fill16(v, dt, n, &rng);
        int64_t shape[4] = {b, s, h, d};
        fa3c_fwd_args a;
        fa3c_fwd_args_init(&a);
        a.q = fa3c_tensor_contiguous(q, dt, 4, shape);
        a.k = fa3c_tensor_contiguous(k, dt, 4, shape);
        a.v = fa3c_tensor_contiguous(v, dt, 4, shape);
        a.out = fa3c_tensor_contiguous(out, dt, 4, shape);
        a.is_causal = causal;
        flusher none = {0};
        bool ok;
        double t = time_fwd(ctx, &a, o->min_time, &none, NULL, NULL, NULL, &ok);
        if (!ok) fprintf(stderr, "fa3c bench: prefill failed: %s\n", fa3c_last_error());
        else gflops = 4.0 * (double)(b * h * s * s * d) / (causal ? 2.0 : 1.0) / t * 1e-9;
    }
    free(q), free(k), free(v), free(out);
    return gflops;
}

static int run_prefill(const bench_opts *o, bench_out *out, fa3c_context *ctx, int threads) {
    static const int64_t lens[4] = {512, 1024, 2048, 4096};
    static const fa3c_dtype dts[2] = {FA3C_DTYPE_BF16, FA3C_DTYPE_F16};
    printf("\nprefill: b 1, h 8/8, d 128, %d threads; GFLOP/s = 4 b h s^2 d (/2 causal) / time; %% of the peak "
           "(bf16: the BF16 dot product's where present, else the fp32 FMA's)\n",
           threads);
    printf("  %-5s %-7s %6s %10s %10s %8s\n", "dtype", "mask", "s", "ms", "GFLOP/s", "% peak");
    for (int di = 0; di < 2; di++)
        for (int causal = 0; causal < 2; causal++)
            for (int li = 0; li < (o->quick ? 2 : 4); li++) {
                int64_t s = lens[li];
                double g = prefill(ctx, o, dts[di], s, causal);
                if (g < 0) return 1;
                double ms = 4.0 * 8 * s * s * 128 / (causal ? 2.0 : 1.0) / g * 1e-6;
                /* bf16 runs on the BF16 dot product where there is one: its peak is the cores' peak */
                double peak = dts[di] == FA3C_DTYPE_BF16 && out->bf16_peak > 0 ? out->bf16_peak : out->fma_peak;
                double pct = peak > 0 ? 100.0 * g / peak : 0;
                printf("  %-5s %-7s %6lld %10.2f %10.1f %7.1f%%\n", fa3c_dtype_name(dts[di]),
                       causal ? "causal" : "none", (long long)s, ms, g, pct);
                csv_row(out, "prefill", dts[di], 1, 8, 8, 128, s, s, causal, 0, threads, ms * 1e-3, g, 0, 0, pct, 0);
            }
    return 0;
}

static int run_decode(const bench_opts *o, bench_out *out, fa3c_context *ctx, int threads) {
    static const int64_t batches[3] = {1, 8, 32}, kvs[6] = {1024, 2048, 4096, 8192, 16384, 32768};
    const int64_t h = 32, h_k = 8, d = 128, page = 16;
    const fa3c_dtype dt = FA3C_DTYPE_BF16;
    printf("\ndecode: bf16, h 32/8, d 128, 1 query, paged (page 16), %d threads; K/V bytes read per second vs a "
           "memcpy (bytes copied per second) timed between the calls\n",
           threads);
    printf("  %5s %7s %10s %10s %10s %10s\n", "batch", "kv", "ms", "GB/s", "memcpy", "x memcpy");
    flusher flush = {.bytes = (size_t)128 << 20};
    flush.buf = malloc(flush.bytes);
    int rc = 0;
    for (int bi = 0; bi < 3 && !rc; bi++)
        for (int ki = 0; ki < (o->quick ? 3 : 6) && !rc; ki++) {
            int64_t b = batches[bi], kv = kvs[ki], pages = kv / page, num_pages = b * pages;
            double kv_bytes = (double)b * (double)kv * (double)h_k * (double)(2 * d) * 2.0;
            if (kv_bytes > o->max_gb * 1e9) {
                printf("  %5lld %7lld   (skipped: %.1f GB of KV > --max-gb %.1f)\n", (long long)b, (long long)kv,
                       kv_bytes * 1e-9, o->max_gb);
                continue;
            }
            int64_t cache_n = num_pages * page * h_k * d;
            uint16_t *kc = malloc((size_t)cache_n * 2), *vc = malloc((size_t)cache_n * 2);
            uint16_t *q = malloc((size_t)(b * h * d) * 2), *ob = malloc((size_t)(b * h * d) * 2);
            int32_t *pt = malloc((size_t)num_pages * 4), *lens = malloc((size_t)b * 4);
            if (!kc || !vc || !q || !ob || !pt || !lens) {
                fprintf(stderr, "fa3c bench: decode b %lld kv %lld: out of memory\n", (long long)b, (long long)kv);
                rc = 1;
            } else {
                uint64_t rng = 7;
                fill16(kc, dt, cache_n, &rng);
                fill16(vc, dt, cache_n, &rng);
                fill16(q, dt, b * h * d, &rng);
                for (int64_t i = 0; i < num_pages; i++) pt[i] = (int32_t)i;
                for (int64_t i = num_pages - 1; i > 0; i--) { /* pages in random order */
                    int64_t j = (int64_t)(rng_next(&rng) % (uint64_t)(i + 1));
                    int32_t t = pt[i];
                    pt[i] = pt[j], pt[j] = t;
                }
                for (int64_t i = 0; i < b; i++) lens[i] = (int32_t)kv;
                int64_t qs[4] = {b, 1, h, d}, cs[4] = {num_pages, page, h_k, d}, ps[2] = {b, pages}, ls[1] = {b};
                fa3c_fwd_args a;
                fa3c_fwd_args_init(&a);
                a.q = fa3c_tensor_contiguous(q, dt, 4, qs);
                a.out = fa3c_tensor_contiguous(ob, dt, 4, qs);
                a.k = fa3c_tensor_contiguous(kc, dt, 4, cs);
                a.v = fa3c_tensor_contiguous(vc, dt, 4, cs);
                a.page_table = fa3c_tensor_contiguous(pt, FA3C_DTYPE_I32, 2, ps);
                a.seqused_k = fa3c_tensor_contiguous(lens, FA3C_DTYPE_I32, 1, ls);
                a.is_causal = 1;
                bool ok;
                double copy_s = 0;
                double t = time_fwd(ctx, &a, o->min_time, &flush, out->pool, out->copy, &copy_s, &ok);
                if (!ok) {
                    fprintf(stderr, "fa3c bench: decode failed: %s\n", fa3c_last_error());
                    rc = 1;
                } else {
                    double gbs = kv_bytes / t * 1e-9;
                    double copy_gbs = out->copy ? (double)out->copy->bytes / copy_s * 1e-9 : out->memcpy_gbs;
                    double ratio = copy_gbs > 0 ? gbs / copy_gbs : 0;
                    printf("  %5lld %7lld %10.3f %10.2f %10.2f %10.2f\n", (long long)b, (long long)kv, t * 1e3, gbs,
                           copy_gbs, ratio);
                    csv_row(out, "decode", dt, b, h, h_k, d, 1, kv, 1, page, threads, t, 0, gbs, copy_gbs, 0, ratio);
                }
            }
            free(kc), free(vc), free(q), free(ob), free(pt), free(lens);
        }
    free(flush.buf);
    return rc;
}

static int run_scaling(const bench_opts *o, bench_out *out, fa3c_context *ctx1, fa3c_context *ctxn, int threads) {
    printf("\nscaling: prefill bf16 s 2048, h 8/8, d 128: 1 -> %d threads\n", threads);
    for (int causal = 0; causal < 2; causal++) {
        double g1 = prefill(ctx1, o, FA3C_DTYPE_BF16, 2048, causal);
        double gn = prefill(ctxn, o, FA3C_DTYPE_BF16, 2048, causal);
        if (g1 < 0 || gn < 0) return 1;
        printf("  %-7s 1 thread %8.1f GFLOP/s, %d threads %8.1f GFLOP/s: speed-up %.2fx\n", causal ? "causal" : "none",
               g1, threads, gn, gn / g1);
        csv_row(out, "scaling", FA3C_DTYPE_BF16, 1, 8, 8, 128, 2048, 2048, causal, 0, 1, 0, g1, 0, 0, 0, 0);
        csv_row(out, "scaling", FA3C_DTYPE_BF16, 1, 8, 8, 128, 2048, 2048, causal, 0, threads, 0, gn, 0, 0, 0, gn / g1);
    }
    return 0;
}

static void bench_usage(FILE *f) {
    fprintf(f, "usage: fa3c bench [--backend NAME] [--threads N] [--csv FILE] [--only probes|prefill|decode|scaling]\n"
               "                  [--min-time SEC] [--max-gb GB] [--quick]\n"
               "  --backend   backend to measure (default: $FA3C_BACKEND or the best available)\n"
               "  --threads   CPU threads (default: $FA3C_NUM_THREADS or the cores this process may use)\n"
               "  --csv       also write every measurement to FILE\n"
               "  --min-time  seconds of timed calls per shape (default 1; --quick 0.3)\n"
               "  --max-gb    skip decode shapes with more KV cache than this (default 4.5)\n"
               "  --quick     fewer shapes, shorter timing\n");
}

int fa3c_cmd_bench(int argc, char **argv) {
    bench_opts o = {.min_time = 1.0, .max_gb = 4.5};
    bool min_time_set = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            bench_usage(stdout);
            return 0;
        } else if (!strcmp(arg, "--quick")) {
            o.quick = true;
        } else if (val && !strcmp(arg, "--backend")) {
            o.backend = val, i++;
        } else if (val && !strcmp(arg, "--csv")) {
            o.csv = val, i++;
        } else if (val && !strcmp(arg, "--only")) {
            o.only = val, i++;
        } else if (val && !strcmp(arg, "--threads")) {
            o.threads = atoi(val), i++;
        } else if (val && !strcmp(arg, "--min-time")) {
            o.min_time = atof(val), min_time_set = true, i++;
        } else if (val && !strcmp(arg, "--max-gb")) {
            o.max_gb = atof(val), i++;
        } else {
            fprintf(stderr, "fa3c bench: unknown or incomplete option '%s'\n", arg);
            bench_usage(stderr);
            return 2;
        }
    }
    if (o.quick && !min_time_set) o.min_time = 0.3;
    if (o.only && strcmp(o.only, "probes") && strcmp(o.only, "prefill") && strcmp(o.only, "decode") &&
        strcmp(o.only, "scaling")) {
        fprintf(stderr, "fa3c bench: --only expects probes, prefill, decode or scaling, got '%s'\n", o.only);
        return 2;
    }

    fa3c_context_options opt;
    fa3c_context_options_init(&opt);
    opt.backend = o.backend;
    opt.num_threads = o.threads;
    fa3c_context *ctx, *ctx1 = NULL;
    if (fa3c_context_create(&opt, &ctx) != FA3C_OK) {
        fprintf(stderr, "fa3c bench: %s\n", fa3c_last_error());
        return 1;
    }
    int threads = fa3c_context_num_threads(ctx);
    opt.num_threads = 1;
    if (fa3c_context_create(&opt, &ctx1) != FA3C_OK) {
        fprintf(stderr, "fa3c bench: %s\n", fa3c_last_error());
        fa3c_context_destroy(ctx);
        return 1;
    }

    bench_out out = {0};
    if (o.csv) {
        out.csv = fopen(o.csv, "w");
        if (!out.csv) {
            fprintf(stderr, "fa3c bench: cannot write %s\n", o.csv);
            fa3c_context_destroy(ctx);
            fa3c_context_destroy(ctx1);
            return 1;
        }
        fprintf(out.csv, "section,dtype,b,h,h_k,d,s_q,s_k,causal,page,threads,ms,gflops,gbps,memcpy_gbps,pct_peak,"
                         "ratio\n");
    }

    /* The anchors run first, on a pool of the same size as the measured context's. */
    fa3c_threadpool *pool;
    if (fa3c_threadpool_create(threads, &pool) != FA3C_OK) {
        fprintf(stderr, "fa3c bench: %s\n", fa3c_last_error());
        return 1;
    }
    bool avx512 = false, avx2 = false, bf16 = false;
#ifdef BENCH_X86
    __builtin_cpu_init();
    avx512 = __builtin_cpu_supports("avx512f");
    avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
#endif
    printf("fa3c bench: backend %s, %d threads (%d cores available)\n", fa3c_context_backend(ctx), threads,
           fa3c_available_cores());
    if (avx512 || avx2) out.fma_peak = run_flops_probe(pool, avx512 ? 0 : 1);
    if (bf16) out.bf16_peak = run_flops_probe(pool, 2);
    out.pool = pool;
    out.copy = memcpy_probe_new(pool);
    if (out.copy) {
        double best = 1e30;
        for (int rep = 0; rep < 5; rep++) {
            double t = memcpy_probe_once(pool, out.copy);
            if (t < best) best = t;
        }
        out.memcpy_gbs = (double)out.copy->bytes / best * 1e-9;
    }
    printf("probes: fp32 FMA peak %.1f GFLOP/s (%s, %d threads, register-only loop, best of 8)", out.fma_peak,
           avx512 ? "AVX-512" : avx2 ? "AVX2" : "none", threads);
    if (out.bf16_peak > 0) printf(", bf16 dot %.1f GFLOP/s", out.bf16_peak);
    printf("; memcpy %.2f GB/s copied (%.2f GB/s read + write)\n", out.memcpy_gbs, 2 * out.memcpy_gbs);
    csv_row(&out, "probe_fma", FA3C_DTYPE_F32, 0, 0, 0, 0, 0, 0, 0, 0, threads, 0, out.fma_peak, 0, 0, 0, 0);
    csv_row(&out, "probe_bf16", FA3C_DTYPE_BF16, 0, 0, 0, 0, 0, 0, 0, 0, threads, 0, out.bf16_peak, 0, 0, 0, 0);
    csv_row(&out, "probe_memcpy", FA3C_DTYPE_NONE, 0, 0, 0, 0, 0, 0, 0, 0, threads, 0, 0, 0, out.memcpy_gbs, 0, 0);

    int rc = 0;
    if (!o.only || !strcmp(o.only, "prefill")) rc |= run_prefill(&o, &out, ctx, threads);
    if (!rc && (!o.only || !strcmp(o.only, "decode"))) rc |= run_decode(&o, &out, ctx, threads);
    if (!rc && (!o.only || !strcmp(o.only, "scaling"))) rc |= run_scaling(&o, &out, ctx1, ctx, threads);
    if (out.csv) fclose(out.csv);
    memcpy_probe_free(out.copy);
    fa3c_threadpool_destroy(pool);
    fa3c_context_destroy(ctx1);
    fa3c_context_destroy(ctx);
    return rc;
}
