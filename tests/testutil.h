/*
 * Test utilities: a deterministic RNG, guarded host buffers (canaries before and after every
 * allocation), strided tensor views, builders of every forward mode's fa3c_fwd_args (batched,
 * varlen, kvcache with paging / append / rotary / leftpad / batch index), FA3's pass rule
 * (fa3-semantics.md §8) against the naive references (naive.h), and the structural checks every
 * forward must pass: rows it must not write are untouched, canaries intact, inputs unchanged,
 * the appended cache equal to the naive's copy.
 *
 * Shape legend as in include/fa3c.h (b, s_q, s_k, s_new, h, h_k, d, dv, S).
 *
 * Device backends: every buffer is a host buffer; for a context whose device is not the CPU the
 * arena is mirrored into device memory around the call (fa3c_device_alloc / fa3c_device_copy),
 * and all checks run on the copies brought back.
 */
#ifndef FA3C_TESTS_TESTUTIL_H
#define FA3C_TESTS_TESTUTIL_H

#include "fa3c.h"
#include "naive.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ----------------------------------------------------------------------------------------- */
/* Deterministic RNG (splitmix64) */

typedef struct tu_rng { uint64_t s; } tu_rng;
void     tu_rng_seed(tu_rng *r, uint64_t seed);
uint64_t tu_rng_u64(tu_rng *r);
double   tu_rng_uniform(tu_rng *r);                      /* [0, 1) */
double   tu_rng_normal(tu_rng *r);                       /* N(0, 1) */
int64_t  tu_rng_int(tu_rng *r, int64_t lo, int64_t hi);  /* [lo, hi); lo when hi <= lo */
void     tu_rng_perm(tu_rng *r, int32_t *p, int64_t n);  /* a random permutation of 0..n-1 */

/* ----------------------------------------------------------------------------------------- */
/* Guarded buffers */

#define TU_GUARD    64   /* canary bytes before and after every buffer */
#define TU_MAX_BUFS 64
#define TU_FILL_OUT 0xCD /* what output buffers hold before a call ("never written" pattern) */

typedef struct tu_buf {
    uint8_t *base;       /* guard | data | guard */
    size_t   bytes;      /* data bytes */
    uint8_t *saved;      /* snapshot of base (guards included) taken by tu_arena_snapshot */
    void    *dev;        /* device twin of base (device backends), allocated through dev_ctx */
    fa3c_context *dev_ctx;
} tu_buf;

typedef struct tu_arena {
    tu_buf buf[TU_MAX_BUFS];
    int    n;
} tu_arena;

void    tu_arena_init(tu_arena *a);
void    tu_arena_free(tu_arena *a);
/* Zero-filled, canary-guarded data of `bytes` bytes (at least 1), 64-byte aligned. Aborts the
 * test program on exhaustion (tests only). */
void   *tu_alloc(tu_arena *a, size_t bytes);
tu_buf *tu_arena_find(tu_arena *a, const void *p);
/* 0 when every canary is intact; else the count of damaged buffers (described into msg). */
int     tu_arena_guards(const tu_arena *a, char *msg, size_t n);
void    tu_arena_snapshot(tu_arena *a);                   /* saved := current contents */
void    tu_arena_restore(tu_arena *a);                    /* current := saved */

/* ----------------------------------------------------------------------------------------- */
/* Tensors */

/* A new tensor. pad > 0 makes every non-last stride exceed the dense one by pad elements
 * (a view into a larger buffer); pad = 0 is contiguous. */
fa3c_tensor tu_tensor(tu_arena *a, fa3c_dtype dtype, int ndim, const int64_t *shape, int64_t pad);
/* The view with dims permuted: result dim i is t's dim perm[i]. */
fa3c_tensor tu_permute(fa3c_tensor t, const int *perm);
/* Contiguous int32 vector holding v[0..n). */
fa3c_tensor tu_index(tu_arena *a, const int32_t *v, int64_t n);
/* Every element := round_to_dtype(scale * N(0,1)) (or uniform in [lo, hi)). */
void        tu_fill_normal(const fa3c_tensor *t, tu_rng *r, double scale);
void        tu_fill_uniform(const fa3c_tensor *t, tu_rng *r, double lo, double hi);
/* Element offset of the multi-index idx. Next multi-index in row-major order; false at the end. */
int64_t     tu_offset(const fa3c_tensor *t, const int64_t *idx);
bool        tu_next(const fa3c_tensor *t, int64_t *idx);
int64_t     tu_numel(const fa3c_tensor *t);
/* Spacing of dtype's representable numbers at |x| (f32, f16, bf16, e4m3; subnormals included). */
double      tu_ulp(fa3c_dtype dtype, double x);

/* ----------------------------------------------------------------------------------------- */
/* Forward cases */

typedef enum tu_mode { TU_BATCHED, TU_VARLEN, TU_KVCACHE } tu_mode;

typedef struct tu_case {
    char       name[192];
    tu_mode    mode;
    fa3c_dtype dtype;
    int64_t    b, s_q, s_k, h, h_k, d, dv;
    /* varlen: random lengths up to s_q / s_k (FA3's "random" padding: [max(1, s-20), s]) */
    bool       zero_len;     /* some sequences empty (k: every 5th and the last; q: the 4th) */
    bool       unused;       /* seqused_q / seqused_k below the cu_seqlens capacity */
    /* kvcache (flash_attn_with_kvcache): cache capacity s_k, random cache_seqlens */
    int64_t    page_size;    /* 0: not paged; else every sequence owns 3x the pages it needs */
    int64_t    s_new;        /* 0: no append */
    bool       varlen_q;     /* kvcache: q varlen (cu_seqlens_q) and k_new varlen (cu_seqlens_k_new) */
    int        rotary;       /* 0: none; 1: interleaved; 2: half split (needs s_new > 0) */
    int64_t    rotary_dim;   /* 0: d */
    bool       leftpad, batch_idx;
    bool       rotary_seqlens;   /* seqlens_rotary = cache_seqlens / 2 (else the default base) */
    bool       no_cache_seqlens; /* no seqused_k (only without append): every cache row is attended */
    /* masks and options */
    bool       causal;
    int64_t    wl, wr;       /* window (-1: unbounded) */
    int64_t    chunk;
    double     softcap;
    fa3c_dtype sinks;        /* NONE: no sinks */
    bool       qv, descale;  /* descale: random (b, h_k) q/k/v descales (fp8) */
    double     scale;        /* 0: library default (args.softmax_scale NaN) */
    int32_t    num_splits, pack_gqa;
    bool       out_accum;    /* pass out_accum / lse_accum when the call splits */
    bool       sched_meta;   /* kvcache: precomputed scheduler metadata, used for two calls */
    bool       pad;          /* non-contiguous views (padded head / row strides, strided lse) */
    uint64_t   seed;
} tu_case;

/* A case's defaults: bf16, no options, windows -1, pack_gqa -1, num_splits 1, seed 1. */
void tu_case_init(tu_case *c);
/* A readable one-line description into c->name (appended to prefix). */
void tu_case_describe(tu_case *c, const char *prefix);

/* Everything one case needs, built once and reused for every backend. */
typedef struct tu_prepared {
    tu_case       c;
    tu_arena      arena;
    fa3c_fwd_args args;
    fa3c_tensor   k_copy, v_copy;  /* the naive's cache copies (same strides as args.k/v) */
    naive_result  exact, lowp;
    bool          kvcache;
    int64_t       s_k_static;      /* FA3's static seqlen_k */
} tu_prepared;

/* Builds the case's tensors and runs both naive references. 0, or -1 (message on stderr). */
int  tu_prepare(const tu_case *c, tu_prepared *p);
void tu_prepared_free(tu_prepared *p);

typedef enum tu_rule {
    TU_RULE_FA3,    /* FA3's pass rule (§8) vs NAIVE_EXACT rounded, with NAIVE_LOWP as "naive" */
    TU_RULE_TIGHT,  /* |out - exact| <= ulp(out dtype, |exact|) + 1e-6; lse 1e-4 relative */
} tu_rule;

typedef enum tu_verdict { TU_PASS = 0, TU_FAIL = 1, TU_SKIP = 2 } tu_verdict;

typedef struct tu_report {
    tu_verdict v;
    double     max_err, bound;     /* the out check (max |out - ref| and its bound) */
    int32_t    num_splits;         /* resolved S of the (last) call */
    const char *kernel;            /* the backend's kernel for the call (its select()) */
    char       msg[512];           /* why it failed or was skipped */
} tu_report;

/* Runs the prepared case on ctx (restoring every buffer first) and checks it under rule.
 * UNSUPPORTED from the backend gives TU_SKIP. */
tu_verdict tu_run(fa3c_context *ctx, tu_prepared *p, tu_rule rule, tu_report *rep);

/* ----------------------------------------------------------------------------------------- */
/* Device mirroring (for the combine tests too) */

/* Copies every buffer of a (guards included) to ctx's device, allocating twins there on first
 * use (fa3c_device_alloc); and back to the host. 0 or -1. */
int  tu_arena_to_device(tu_arena *a, fa3c_context *ctx);
int  tu_arena_from_device(tu_arena *a, fa3c_context *ctx);
/* t with its data pointer moved into a's device twin (device_type CUDA); t itself on CPU. */
fa3c_tensor tu_on_device(tu_arena *a, const fa3c_tensor *t, const fa3c_context *ctx);
/* Every present tensor of x moved to its device twin (owner arena a, else run: the partials). */
void tu_args_to_device(tu_arena *a, tu_arena *run, fa3c_fwd_args *x, const fa3c_context *ctx);
/* FA3's split partials of the case n for S splits, in arena: out_accum (S, b, h, s_q, dv) / (S, h,
 * total_q, dv) and lse_accum (S, b, h, s_q) / (S, h, total_q), fp32. */
void tu_accum_tensors(tu_arena *arena, const naive_result *n, int64_t S, fa3c_tensor *out, fa3c_tensor *lse);
/* One buffer (guards included) to or from its device twin; 0 when b is NULL or has none. */
int  tu_buf_copy(fa3c_context *ctx, tu_buf *b, fa3c_copy_kind kind);

/* Double-precision combine of S partials (FA3 attention_combine_ref): lse_s (S,), out_s (S, dv)
 * dense. Over parts with finite lse: lse = log sum exp(lse_s), out = sum exp(lse_s - lse) out_s;
 * no such part: out 0, lse -inf. */
void tu_combine_ref(int64_t S, const double *lse_s, const double *out_s, int64_t dv, double *out,
                    double *lse);

#endif /* FA3C_TESTS_TESTUTIL_H */
