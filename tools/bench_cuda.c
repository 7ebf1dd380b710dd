/*
 * fa3c cuda backend benchmark: CSV on stdout, one row per shape, with the same-run anchor of a
 * device-to-device copy (bytes read + written per second).
 *
 *   prefill: FA3's sweep: bf16, hidden 2048 (d = 64, 128, 256 with h = 32, 16, 8), 16k tokens in
 *            total (b = 16384 / s), s = 512..16k, causal and not; TFLOP/s with FA3's count
 *            4 * b * h * s * s * d (halved when causal); then d 128 causal over a paged cache
 *            (page sizes 1, 16, 64, random page order), s = 4k and 16k.
 *   decode:  q_len 1, 32 q heads / 8 kv heads, d = 128, bf16, batch 1..128, KV length 1k..64k,
 *            contiguous cache and page sizes 1, 16, 64 (random page order), cache_seqlens = KV
 *            length, num_splits = 0 (heuristic); each call replayed from a CUDA graph; K/V bytes
 *            read per second and their ratio to the copy. Once per split mode of the backend
 *            ($FA3C_CUDA_SPLIT, one context each), so the modes compare within one run.
 *            $FA3C_BENCH_DECODE=batch:kv:page_size (page size 0: contiguous) runs that shape alone,
 *            so a profiler's launch count can reach it.
 *   fp8:     the prefill sweep for d = 128 and 256 with e4m3 q, k, v (bf16 out, no descales), each
 *            shape also timed in bf16 in the same run: TFLOP/s of both (FA3's count) and fp8 / bf16.
 *   mla:     MLA absorbed decode as DeepSeek is served through FA3: q (b, s_q, 128, 64) and qv
 *            (b, s_q, 128, 512) bf16 against one kv head, k (pages, page_size, 1, 64) and v
 *            (pages, page_size, 1, 512), pages in random order, cache_seqlens = KV, causal,
 *            default scale, num_splits 0, pack_gqa heuristic; batch 64 and 128, KV 4k and 16k, page
 *            sizes 1 and 64, s_q 1 and 2 (speculative verify); k and v as separate buffers ("split")
 *            and as SGLang's views of one 576-wide row ("fused": v dims 0..511, k 512..575). From a
 *            CUDA graph, per split mode like decode; TFLOP/s with 2 h s_q s_k (d + 2 dv) per
 *            sequence, K/V bytes read per second and their ratio to the copy.
 *            $FA3C_BENCH_MLA=batch:kv:page_size:s_q runs that shape alone (any KV length; split
 *            layout), so a profiler's launch count can reach it.
 * Rows of fp8 and mla name the kernel the backend chose. Times are medians of repeated event-timed
 * runs after a warm-up. Inputs are random (a 64 MiB random block replicated over the cache; for
 * e4m3, random bytes with the top exponent bit clear: finite, |x| < 2).
 *
 * Usage: fa3c_bench_cuda [prefill|decode|fp8|mla|all] [max_kv_gib] [split modes, comma-separated; default fill]
 */
#include "fa3c.h"
/* The backend's kernel choice (fa3c_problem_init + select(), as fa3c_fwd makes it); not public API. */
#include "core/internal.h"

#include <cuda_runtime_api.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_CUDA(call)                                                                                           \
    do {                                                                                                           \
        cudaError_t e_ = (call);                                                                                   \
        if (e_ != cudaSuccess) {                                                                                   \
            fprintf(stderr, "bench_cuda: %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));      \
            exit(1);                                                                                               \
        }                                                                                                          \
    } while (0)
#define CHECK_FA3C(call)                                                                                           \
    do {                                                                                                           \
        fa3c_status s_ = (call);                                                                                   \
        if (s_ != FA3C_OK) {                                                                                       \
            fprintf(stderr, "bench_cuda: %s:%d: %s: %s\n", __FILE__, __LINE__, fa3c_status_string(s_),             \
                    fa3c_last_error());                                                                            \
            exit(1);                                                                                               \
        }                                                                                                          \
    } while (0)

#define RAND_BLOCK (64u << 20)

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static float median(float *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_float);
    return v[n / 2];
}

/* bytes of device memory at dst := copies of the random block from byte `shift` on (so that
 * tensors filled with different shifts differ), bf16-valued noise in [-1, 1). */
static void fill_random(void *dst, size_t bytes, const void *block_dev, size_t shift) {
    size_t chunk = RAND_BLOCK - shift;
    for (size_t off = 0; off < bytes; off += chunk) {
        size_t n = bytes - off < chunk ? bytes - off : chunk;
        CHECK_CUDA(cudaMemcpy((char *)dst + off, (const char *)block_dev + shift, n, cudaMemcpyDeviceToDevice));
    }
}

/* The random block on the device: bf16 noise in [-1, 1), or (e4m3) random bytes with bit 6 (the
 * exponent's top bit) clear, so never the NaN encodings 0x7f / 0xff and |x| < 2. */
static void *random_block(int e4m3) {
    uint16_t *h = malloc(RAND_BLOCK);
    uint64_t s = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < RAND_BLOCK / 2; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        if (e4m3) {
            h[i] = (uint16_t)((s >> 40) & 0xBFBF);
            continue;
        }
        float f = (float)((s >> 40) & 0xFFFF) / 32768.0f - 1.0f;
        uint32_t bits;
        memcpy(&bits, &f, 4);
        h[i] = (uint16_t)(bits >> 16);
    }
    void *d;
    CHECK_CUDA(cudaMalloc(&d, RAND_BLOCK));
    CHECK_CUDA(cudaMemcpy(d, h, RAND_BLOCK, cudaMemcpyHostToDevice));
    free(h);
    return d;
}

static fa3c_tensor dev_tensor(void *data, fa3c_dtype dt, int ndim, const int64_t *shape) {
    fa3c_tensor t = fa3c_tensor_contiguous(data, dt, ndim, shape);
    t.device_type = FA3C_DEVICE_CUDA;
    t.device_index = 0;
    return t;
}

/* The kernel fa3c_fwd runs a with ("?" when a is rejected). */
static const char *kernel_name(fa3c_context *ctx, const fa3c_fwd_args *a) {
    fa3c_problem p;
    fa3c_kernel_choice c = {-1, "?"};
    if (fa3c_problem_init(ctx, a, &p) == FA3C_OK) ctx->backend->select(ctx, &p, &c);
    return c.name;
}

/* Median seconds of one fa3c_fwd: `reps` timed runs of `inner` calls each (from a CUDA graph when
 * graph is set, else launched directly). */
static float time_fwd(fa3c_context *ctx, cudaStream_t st, const fa3c_fwd_args *a, int graph, int inner, int reps) {
    CHECK_FA3C(fa3c_fwd(ctx, a)); /* warm-up: workspace, module load */
    CHECK_CUDA(cudaStreamSynchronize(st));
    cudaGraphExec_t exec = NULL;
    if (graph) {
        cudaGraph_t g;
        CHECK_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        for (int i = 0; i < inner; i++) CHECK_FA3C(fa3c_fwd(ctx, a));
        CHECK_CUDA(cudaStreamEndCapture(st, &g));
        CHECK_CUDA(cudaGraphInstantiate(&exec, g, 0));
        CHECK_CUDA(cudaGraphDestroy(g));
        CHECK_CUDA(cudaGraphLaunch(exec, st));
    }
    cudaEvent_t e0, e1;
    CHECK_CUDA(cudaEventCreate(&e0));
    CHECK_CUDA(cudaEventCreate(&e1));
    float *t = malloc(sizeof(float) * (size_t)reps);
    for (int r = 0; r < reps; r++) {
        CHECK_CUDA(cudaEventRecord(e0, st));
        if (graph) CHECK_CUDA(cudaGraphLaunch(exec, st));
        else
            for (int i = 0; i < inner; i++) CHECK_FA3C(fa3c_fwd(ctx, a));
        CHECK_CUDA(cudaEventRecord(e1, st));
        CHECK_CUDA(cudaEventSynchronize(e1));
        float ms;
        CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
        t[r] = ms * 1e-3f / (float)inner;
    }
    float m = median(t, reps);
    free(t);
    CHECK_CUDA(cudaEventDestroy(e0));
    CHECK_CUDA(cudaEventDestroy(e1));
    if (exec) CHECK_CUDA(cudaGraphExecDestroy(exec));
    return m;
}

/* Device-to-device copy of 1 GiB: bytes read + written per second. */
static double copy_bandwidth(cudaStream_t st) {
    size_t bytes = (size_t)1 << 30;
    void *a, *b;
    CHECK_CUDA(cudaMalloc(&a, bytes));
    CHECK_CUDA(cudaMalloc(&b, bytes));
    CHECK_CUDA(cudaMemsetAsync(a, 1, bytes, st));
    cudaEvent_t e0, e1;
    CHECK_CUDA(cudaEventCreate(&e0));
    CHECK_CUDA(cudaEventCreate(&e1));
    float t[10];
    for (int r = -2; r < 10; r++) {
        CHECK_CUDA(cudaEventRecord(e0, st));
        CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, st));
        CHECK_CUDA(cudaEventRecord(e1, st));
        CHECK_CUDA(cudaEventSynchronize(e1));
        float ms;
        CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
        if (r >= 0) t[r] = ms * 1e-3f;
    }
    CHECK_CUDA(cudaFree(a));
    CHECK_CUDA(cudaFree(b));
    CHECK_CUDA(cudaEventDestroy(e0));
    CHECK_CUDA(cudaEventDestroy(e1));
    return 2.0 * (double)bytes / median(t, 10);
}

/* host[0 .. np) := the page ids 0 .. np - 1 in a fixed random order. */
static void random_pages(int32_t *host, int64_t np) {
    for (int64_t i = 0; i < np; i++) host[i] = (int32_t)i;
    uint64_t s = 12345;
    for (int64_t i = np - 1; i > 0; i--) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        int64_t j = (int64_t)((s >> 33) % (uint64_t)(i + 1));
        int32_t x = host[i];
        host[i] = host[j];
        host[j] = x;
    }
}

/* One call of FA3's prefill sweep: q, k, v (b, s, h, d) of dtype `in` (device buffers), out
 * (b, s, h, d) bf16 (the output dtype of e4m3 inputs too), lse (b, h, s), one split. */
static fa3c_fwd_args prefill_args(void *q, void *k, void *v, fa3c_dtype in, void *o, void *lse, int64_t b, int64_t s,
                                  int64_t h, int64_t d, int causal) {
    int64_t shp[4] = {b, s, h, d}, lshp[3] = {b, h, s};
    fa3c_fwd_args a;
    fa3c_fwd_args_init(&a);
    a.q = dev_tensor(q, in, 4, shp);
    a.k = dev_tensor(k, in, 4, shp);
    a.v = dev_tensor(v, in, 4, shp);
    a.out = dev_tensor(o, FA3C_DTYPE_BF16, 4, shp);
    a.softmax_lse = dev_tensor(lse, FA3C_DTYPE_F32, 3, lshp);
    a.is_causal = causal;
    a.num_splits = 1;
    return a;
}

/* Prefill over a paged cache (SGLang's extend: flash_attn_with_kvcache with page_table), d 128,
 * h 16, 16k tokens, causal, pages in a random order; q, k, v as in bench_prefill. */
static void bench_prefill_paged(fa3c_context *ctx, cudaStream_t st, void *q, void *k, void *v, void *o) {
    const int64_t total = 16384, h = 16, d = 128, sizes[3] = {1, 16, 64};
    void *pt, *lens;
    int32_t *host = malloc((size_t)total * 4);
    CHECK_CUDA(cudaMalloc(&pt, (size_t)total * 4));
    CHECK_CUDA(cudaMalloc(&lens, 64 * 4));
    printf("kind,seqlen,batch,causal,page_size,d,time_us,tflops\n");
    for (int64_t s = 4096; s <= 16384; s *= 4)
        for (int pi = 0; pi < 3; pi++) {
            int64_t b = total / s, ps = sizes[pi], np = total / ps;
            int64_t qs[4] = {b, s, h, d}, ks[4] = {np, ps, h, d}, pts[2] = {b, s / ps}, ls[1] = {b};
            random_pages(host, np);
            CHECK_CUDA(cudaMemcpy(pt, host, (size_t)np * 4, cudaMemcpyHostToDevice));
            for (int64_t i = 0; i < b; i++) host[i] = (int32_t)s;
            CHECK_CUDA(cudaMemcpy(lens, host, (size_t)b * 4, cudaMemcpyHostToDevice));
            fa3c_fwd_args a;
            fa3c_fwd_args_init(&a);
            a.q = dev_tensor(q, FA3C_DTYPE_BF16, 4, qs);
            a.out = dev_tensor(o, FA3C_DTYPE_BF16, 4, qs);
            a.k = dev_tensor(k, FA3C_DTYPE_BF16, 4, ks);
            a.v = dev_tensor(v, FA3C_DTYPE_BF16, 4, ks);
            a.page_table = dev_tensor(pt, FA3C_DTYPE_I32, 2, pts);
            a.seqused_k = dev_tensor(lens, FA3C_DTYPE_I32, 1, ls);
            a.is_causal = 1;
            a.num_splits = 1;
            float t = time_fwd(ctx, st, &a, 0, 1, 15);
            double flops = 4.0 * b * h * (double)s * s * d / 2;
            printf("prefill_paged,%lld,%lld,1,%lld,%lld,%.1f,%.1f\n", (long long)s, (long long)b, (long long)ps,
                   (long long)d, t * 1e6, flops / t * 1e-12);
            fflush(stdout);
        }
    free(host);
    cudaFree(pt), cudaFree(lens);
}

static void bench_prefill(fa3c_context *ctx, cudaStream_t st, const void *rnd) {
    const int64_t total = 16384, hidden = 2048;
    size_t bytes = (size_t)total * hidden * 2;
    void *q, *k, *v, *o, *lse;
    CHECK_CUDA(cudaMalloc(&q, bytes));
    CHECK_CUDA(cudaMalloc(&k, bytes));
    CHECK_CUDA(cudaMalloc(&v, bytes));
    CHECK_CUDA(cudaMalloc(&o, bytes));
    CHECK_CUDA(cudaMalloc(&lse, (size_t)total * 32 * 4));
    fill_random(q, bytes, rnd, 0);
    fill_random(k, bytes, rnd, 4096);
    fill_random(v, bytes, rnd, 8192);
    printf("kind,seqlen,batch,causal,heads,d,time_us,tflops\n");
    for (int64_t d = 64; d <= 256; d *= 2)
        for (int64_t s = 512; s <= 16384; s *= 2)
            for (int causal = 0; causal <= 1; causal++) {
                int64_t h = hidden / d, b = total / s;
                fa3c_fwd_args a = prefill_args(q, k, v, FA3C_DTYPE_BF16, o, lse, b, s, h, d, causal);
                float t = time_fwd(ctx, st, &a, 0, 1, 15);
                double flops = 4.0 * b * h * (double)s * s * d / (causal ? 2 : 1);
                printf("prefill,%lld,%lld,%d,%lld,%lld,%.1f,%.1f\n", (long long)s, (long long)b, causal, (long long)h,
                       (long long)d, t * 1e6, flops / t * 1e-12);
                fflush(stdout);
            }
    bench_prefill_paged(ctx, st, q, k, v, o);
    cudaFree(q), cudaFree(k), cudaFree(v), cudaFree(o), cudaFree(lse);
}

static void bench_decode(fa3c_context *ctx, cudaStream_t st, const void *rnd, double copy_bw, double max_gib,
                         const char *mode) {
    const int64_t h = 32, hk = 8, d = 128;
    const int64_t batches[] = {1, 16, 64, 128}, kvs[] = {1024, 4096, 16384, 65536}, pages[] = {0, 1, 16, 64};
    size_t cap = (size_t)(max_gib * (double)(1u << 30) / 2); /* per K and V */
    void *kc, *vc, *q, *o, *lens, *pt;
    CHECK_CUDA(cudaMalloc(&kc, cap));
    CHECK_CUDA(cudaMalloc(&vc, cap));
    fill_random(kc, cap, rnd, 0);
    fill_random(vc, cap, rnd, 4096);
    CHECK_CUDA(cudaMalloc(&q, 128 * h * d * 2));
    CHECK_CUDA(cudaMalloc(&o, 128 * h * d * 2));
    CHECK_CUDA(cudaMalloc(&lens, 128 * 4));
    fill_random(q, 128 * h * d * 2, rnd, 12288);
    size_t pt_cap = cap / (hk * d * 2) * sizeof(int32_t); /* one page per key row at most */
    CHECK_CUDA(cudaMalloc(&pt, pt_cap));
    int32_t *host = malloc(pt_cap > 128 * 4 ? pt_cap : 128 * 4);
    long long only[3] = {-1, -1, -1};
    const char *env = getenv("FA3C_BENCH_DECODE");
    if (env && sscanf(env, "%lld:%lld:%lld", &only[0], &only[1], &only[2]) != 3) {
        fprintf(stderr, "FA3C_BENCH_DECODE=%s: expected batch:kv:page_size\n", env);
        exit(2);
    }
    printf("kind,mode,batch,kv,page_size,splits,time_us,kv_gbps,copy_gbps,ratio\n");
    for (int bi = 0; bi < 4; bi++)
        for (int ki = 0; ki < 4; ki++)
            for (int pi = 0; pi < 4; pi++) {
                int64_t b = batches[bi], kv = kvs[ki], ps = pages[pi];
                size_t kv_bytes = (size_t)b * kv * hk * d * 2; /* per K and V */
                if (kv_bytes > cap || (env && (b != only[0] || kv != only[1] || ps != only[2]))) continue;
                for (int64_t i = 0; i < b; i++) host[i] = (int32_t)kv;
                CHECK_CUDA(cudaMemcpy(lens, host, (size_t)b * 4, cudaMemcpyHostToDevice));
                int64_t qs[4] = {b, 1, h, d}, ls[1] = {b};
                fa3c_fwd_args a;
                fa3c_fwd_args_init(&a);
                a.q = dev_tensor(q, FA3C_DTYPE_BF16, 4, qs);
                a.out = dev_tensor(o, FA3C_DTYPE_BF16, 4, qs);
                a.seqused_k = dev_tensor(lens, FA3C_DTYPE_I32, 1, ls);
                if (ps == 0) {
                    int64_t ks[4] = {b, kv, hk, d};
                    a.k = dev_tensor(kc, FA3C_DTYPE_BF16, 4, ks);
                    a.v = dev_tensor(vc, FA3C_DTYPE_BF16, 4, ks);
                } else { /* pages in a random order */
                    int64_t np = b * kv / ps, ks[4] = {np, ps, hk, d}, pts[2] = {b, kv / ps};
                    random_pages(host, np);
                    CHECK_CUDA(cudaMemcpy(pt, host, (size_t)np * 4, cudaMemcpyHostToDevice));
                    a.k = dev_tensor(kc, FA3C_DTYPE_BF16, 4, ks);
                    a.v = dev_tensor(vc, FA3C_DTYPE_BF16, 4, ks);
                    a.page_table = dev_tensor(pt, FA3C_DTYPE_I32, 2, pts);
                }
                a.num_splits = 0;
                fa3c_fwd_info info;
                CHECK_FA3C(fa3c_fwd_query(ctx, &a, &info));
                int inner = kv_bytes < (64u << 20) ? 20 : 3;
                float t = time_fwd(ctx, st, &a, 1, inner, 9);
                double gbps = 2.0 * (double)kv_bytes / t * 1e-9;
                printf("decode,%s,%lld,%lld,%lld,%d,%.1f,%.0f,%.0f,%.3f\n", mode, (long long)b, (long long)kv,
                       (long long)ps, (int)info.num_splits, t * 1e6, gbps, copy_bw * 1e-9, gbps / (copy_bw * 1e-9));
                fflush(stdout);
            }
    free(host);
    cudaFree(kc), cudaFree(vc), cudaFree(q), cudaFree(o), cudaFree(lens), cudaFree(pt);
}

/* FA3's prefill sweep in e4m3 (q, k, v; bf16 out, no descales) for d = 128 and 256 (h = 16, 8),
 * 16k tokens, s = 512..16k, causal and not; every shape also in bf16, so fp8 / bf16 compares
 * within the run. rnd8: the e4m3 random block. */
static void bench_fp8(fa3c_context *ctx, cudaStream_t st, const void *rnd, const void *rnd8) {
    const int64_t total = 16384, hidden = 2048;
    size_t n = (size_t)total * hidden;
    void *q8, *k8, *v8, *q, *k, *v, *o, *lse;
    CHECK_CUDA(cudaMalloc(&q8, n));
    CHECK_CUDA(cudaMalloc(&k8, n));
    CHECK_CUDA(cudaMalloc(&v8, n));
    CHECK_CUDA(cudaMalloc(&q, n * 2));
    CHECK_CUDA(cudaMalloc(&k, n * 2));
    CHECK_CUDA(cudaMalloc(&v, n * 2));
    CHECK_CUDA(cudaMalloc(&o, n * 2));
    CHECK_CUDA(cudaMalloc(&lse, (size_t)total * 16 * 4));
    fill_random(q8, n, rnd8, 0);
    fill_random(k8, n, rnd8, 4096);
    fill_random(v8, n, rnd8, 8192);
    fill_random(q, n * 2, rnd, 0);
    fill_random(k, n * 2, rnd, 4096);
    fill_random(v, n * 2, rnd, 8192);
    printf("kind,seqlen,batch,causal,heads,d,time_us,tflops,bf16_time_us,bf16_tflops,ratio,kernel,bf16_kernel\n");
    for (int64_t d = 128; d <= 256; d *= 2)
        for (int64_t s = 512; s <= 16384; s *= 2)
            for (int causal = 0; causal <= 1; causal++) {
                int64_t h = hidden / d, b = total / s;
                fa3c_fwd_args a8 = prefill_args(q8, k8, v8, FA3C_DTYPE_E4M3, o, lse, b, s, h, d, causal);
                fa3c_fwd_args a16 = prefill_args(q, k, v, FA3C_DTYPE_BF16, o, lse, b, s, h, d, causal);
                float t8 = time_fwd(ctx, st, &a8, 0, 1, 15), t16 = time_fwd(ctx, st, &a16, 0, 1, 15);
                double flops = 4.0 * b * h * (double)s * s * d / (causal ? 2 : 1);
                printf("prefill_fp8,%lld,%lld,%d,%lld,%lld,%.1f,%.1f,%.1f,%.1f,%.3f,%s,%s\n", (long long)s, (long long)b,
                       causal, (long long)h, (long long)d, t8 * 1e6, flops / t8 * 1e-12, t16 * 1e6, flops / t16 * 1e-12,
                       t16 / t8, kernel_name(ctx, &a8), kernel_name(ctx, &a16));
                fflush(stdout);
            }
    cudaFree(q8), cudaFree(k8), cudaFree(v8), cudaFree(q), cudaFree(k), cudaFree(v), cudaFree(o), cudaFree(lse);
}

/* MLA absorbed decode as DeepSeek is served through FA3 (SGLang's flash_attn_with_kvcache call):
 * q (b, s_q, h, d) and qv (b, s_q, h, dv) bf16, h = 128, d = 64, dv = 512, one kv head, k
 * (pages, page_size, 1, d) and v (pages, page_size, 1, dv) paged in random order, cache_seqlens =
 * KV, causal, default scale, num_splits 0, pack_gqa heuristic; each call replayed from a CUDA graph.
 * Layout "split": k and v in buffers of their own; "fused": SGLang's one cache of (d + dv)-element
 * rows, v its first dv dims and k the last d (views with row stride d + dv). One cache of the
 * largest shape within max_gib serves every shape. */
static void bench_mla(fa3c_context *ctx, cudaStream_t st, const void *rnd, double copy_bw, double max_gib,
                      const char *mode) {
    const int64_t h = 128, d = 64, dv = 512, row = d + dv, max_b = 128, max_sq = 2;
    int64_t batches[] = {64, 128}, kvs[] = {4096, 16384}, pages[] = {1, 64}, sqs[] = {1, 2};
    int n = 2, layouts = 2; /* per dimension; layouts: split, then fused */
    const char *env = getenv("FA3C_BENCH_MLA");
    if (env) {
        long long v[4];
        if (sscanf(env, "%lld:%lld:%lld:%lld", &v[0], &v[1], &v[2], &v[3]) != 4 || v[0] < 1 || v[0] > max_b ||
            v[1] < 1 || v[2] < 1 || v[1] % v[2] || v[3] < 1 || v[3] > max_sq) {
            fprintf(stderr, "FA3C_BENCH_MLA=%s: expected batch (<= 128):kv:page_size (dividing kv):s_q (<= 2)\n",
                    env);
            exit(2);
        }
        batches[0] = v[0], kvs[0] = v[1], pages[0] = v[2], sqs[0] = v[3];
        n = 1, layouts = 1;
    }
    size_t cap = (size_t)(max_gib * (double)(1u << 30));
    int64_t max_tokens = 0;
    for (int bi = 0; bi < n; bi++)
        for (int ki = 0; ki < n; ki++) {
            int64_t tokens = batches[bi] * kvs[ki];
            if ((size_t)tokens * row * 2 <= cap && tokens > max_tokens) max_tokens = tokens;
        }
    printf("kind,mode,layout,batch,s_q,kv,page_size,splits,pack_gqa,time_us,tflops,kv_gbps,copy_gbps,ratio,kernel\n");
    if (max_tokens == 0) return;
    size_t cache_bytes = (size_t)max_tokens * row * 2, qv_bytes = (size_t)(max_b * max_sq * h * dv * 2);
    void *cache, *q, *qv, *o, *lens, *pt;
    CHECK_CUDA(cudaMalloc(&cache, cache_bytes));
    fill_random(cache, cache_bytes, rnd, 0);
    CHECK_CUDA(cudaMalloc(&q, (size_t)(max_b * max_sq * h * d * 2)));
    CHECK_CUDA(cudaMalloc(&qv, qv_bytes));
    CHECK_CUDA(cudaMalloc(&o, qv_bytes));
    CHECK_CUDA(cudaMalloc(&lens, (size_t)max_b * 4));
    CHECK_CUDA(cudaMalloc(&pt, (size_t)max_tokens * 4)); /* page size 1 at most */
    fill_random(q, (size_t)(max_b * max_sq * h * d * 2), rnd, 12288);
    fill_random(qv, qv_bytes, rnd, 16384);
    int32_t *host = malloc((size_t)max_tokens * 4);
    for (int fused = 0; fused < layouts; fused++)
        for (int bi = 0; bi < n; bi++)
            for (int ki = 0; ki < n; ki++)
                for (int pi = 0; pi < n; pi++)
                    for (int si = 0; si < n; si++) {
                        int64_t b = batches[bi], kv = kvs[ki], ps = pages[pi], sq = sqs[si], tokens = b * kv;
                        if (tokens > max_tokens) continue;
                        size_t kv_bytes = (size_t)tokens * row * 2; /* K and V */
                        int64_t np = tokens / ps, qs[4] = {b, sq, h, d}, os[4] = {b, sq, h, dv}, ls[1] = {b};
                        int64_t ks[4] = {np, ps, 1, d}, vs[4] = {np, ps, 1, dv}, pts[2] = {b, kv / ps};
                        for (int64_t i = 0; i < b; i++) host[i] = (int32_t)kv;
                        CHECK_CUDA(cudaMemcpy(lens, host, (size_t)b * 4, cudaMemcpyHostToDevice));
                        random_pages(host, np);
                        CHECK_CUDA(cudaMemcpy(pt, host, (size_t)np * 4, cudaMemcpyHostToDevice));
                        fa3c_fwd_args a;
                        fa3c_fwd_args_init(&a);
                        a.q = dev_tensor(q, FA3C_DTYPE_BF16, 4, qs);
                        a.qv = dev_tensor(qv, FA3C_DTYPE_BF16, 4, os);
                        a.out = dev_tensor(o, FA3C_DTYPE_BF16, 4, os);
                        if (fused) {
                            a.v = dev_tensor(cache, FA3C_DTYPE_BF16, 4, vs);
                            a.k = dev_tensor((char *)cache + dv * 2, FA3C_DTYPE_BF16, 4, ks);
                            int64_t strides[3] = {ps * row, row, row};
                            memcpy(a.k.stride, strides, sizeof strides);
                            memcpy(a.v.stride, strides, sizeof strides);
                        } else {
                            a.k = dev_tensor(cache, FA3C_DTYPE_BF16, 4, ks);
                            a.v = dev_tensor((char *)cache + (size_t)max_tokens * d * 2, FA3C_DTYPE_BF16, 4, vs);
                        }
                        a.page_table = dev_tensor(pt, FA3C_DTYPE_I32, 2, pts);
                        a.seqused_k = dev_tensor(lens, FA3C_DTYPE_I32, 1, ls);
                        a.is_causal = 1;
                        a.num_splits = 0;
                        fa3c_fwd_info info;
                        CHECK_FA3C(fa3c_fwd_query(ctx, &a, &info));
                        int inner = kv_bytes < (64u << 20) ? 20 : 3;
                        float t = time_fwd(ctx, st, &a, 1, inner, 9);
                        double flops = (double)b * (2.0 * h * sq * kv * (d + dv) + 2.0 * h * sq * kv * dv);
                        double gbps = (double)kv_bytes / t * 1e-9;
                        printf("mla,%s,%s,%lld,%lld,%lld,%lld,%d,%d,%.1f,%.1f,%.0f,%.0f,%.3f,%s\n", mode,
                               fused ? "fused" : "split", (long long)b, (long long)sq, (long long)kv, (long long)ps,
                               (int)info.num_splits, (int)info.pack_gqa, t * 1e6, flops / t * 1e-12, gbps,
                               copy_bw * 1e-9, gbps / (copy_bw * 1e-9), kernel_name(ctx, &a));
                        fflush(stdout);
                    }
    free(host);
    cudaFree(cache), cudaFree(q), cudaFree(qv), cudaFree(o), cudaFree(lens), cudaFree(pt);
}

static fa3c_context *context_for(cudaStream_t st, const char *split_mode) {
    fa3c_context_options opt;
    fa3c_context_options_init(&opt);
    opt.backend = "cuda";
    opt.stream = st;
    setenv("FA3C_CUDA_SPLIT", split_mode, 1);
    fa3c_context *ctx;
    CHECK_FA3C(fa3c_context_create(&opt, &ctx));
    unsetenv("FA3C_CUDA_SPLIT");
    return ctx;
}

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "all";
    double max_gib = argc > 2 ? atof(argv[2]) : 34.0;
    static const char *const sections[] = {"prefill", "decode", "fp8", "mla", "all"};
    int known = 0;
    for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++) known |= !strcmp(what, sections[i]);
    if (!known) {
        fprintf(stderr, "usage: fa3c_bench_cuda [prefill|decode|fp8|mla|all] [max_kv_gib] [split modes, "
                        "comma-separated; default fill]\n");
        return 2;
    }
    bool all = !strcmp(what, "all");
    char modes[64], *mode[8];
    int n_modes = 0;
    snprintf(modes, sizeof modes, "%s", argc > 3 ? argv[3] : "fill");
    for (char *save = NULL, *m = strtok_r(modes, ",", &save); m && n_modes < 8; m = strtok_r(NULL, ",", &save))
        mode[n_modes++] = m;
    cudaStream_t st;
    CHECK_CUDA(cudaSetDevice(0));
    CHECK_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    struct cudaDeviceProp prop;
    CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
    double copy_bw = copy_bandwidth(st);
    printf("# device %s, %d SMs; copy (1 GiB D2D, read + write) %.0f GB/s\n", prop.name, prop.multiProcessorCount,
           copy_bw * 1e-9);
    void *rnd = random_block(0);
    if (all || !strcmp(what, "prefill")) {
        fa3c_context *ctx = context_for(st, "fill");
        bench_prefill(ctx, st, rnd);
        fa3c_context_destroy(ctx);
    }
    if (all || !strcmp(what, "fp8")) {
        void *rnd8 = random_block(1);
        fa3c_context *ctx = context_for(st, "fill");
        bench_fp8(ctx, st, rnd, rnd8);
        fa3c_context_destroy(ctx);
        cudaFree(rnd8);
    }
    if (all || !strcmp(what, "decode"))
        for (int i = 0; i < n_modes; i++) {
            fa3c_context *ctx = context_for(st, mode[i]);
            bench_decode(ctx, st, rnd, copy_bw, max_gib, mode[i]);
            fa3c_context_destroy(ctx);
        }
    if (all || !strcmp(what, "mla"))
        for (int i = 0; i < n_modes; i++) {
            fa3c_context *ctx = context_for(st, mode[i]);
            bench_mla(ctx, st, rnd, copy_bw, max_gib, mode[i]);
            fa3c_context_destroy(ctx);
        }
    cudaFree(rnd);
    cudaStreamDestroy(st);
    return 0;
}
