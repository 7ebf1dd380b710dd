/*
 * Bad input through the public API. Every case starts from a valid call, breaks exactly one
 * thing and checks that
 *   (a) the call returns the expected status (FA3C_ERROR_INVALID_ARGUMENT),
 *   (b) fa3c_last_error() names the broken argument ("name:" for fa3c_fwd, the word elsewhere),
 *   (c) not one byte changed in any buffer of the call: the outputs (out, softmax_lse, out_accum,
 *       lse_accum), the k/v cache (written when appending), every input, and the 4096 canary bytes
 *       (0xA5) before and after each of them.
 * Index-data cases (check_inputs = 1) also check that the same arguments with check_inputs = 0
 * pass validation (fa3c_fwd_query, which reads no index data).
 * The harness is tested too: each valid base call must succeed, write its outputs (so a write
 * would be seen) and leave the canaries alone.
 *
 * Bases (shape legend b, s_q, s_k, s_new, h, h_k, d, dv):
 *   BATCHED  q (2, 3, 4, 64), k/v (2, 5, 2, 64), out (2, 3, 4, 64), softmax_lse (2, 4, 3); bf16
 *   VARLEN   cu_seqlens_q [0, 1, 3], cu_seqlens_k [0, 2, 5]: q (3, 4, 64), k/v (5, 2, 64)
 *   PAGED    kvcache: 6 pages of 4 rows, page_table (2, 3), seqused_k [3, 5], appending k_new/v_new
 *            (2, 2, 2, 64) with rotary (cos/sin (12, 16)), causal, q (2, 2, 4, 64)
 *   SPLIT    BATCHED with num_splits = 3 and out_accum (S, 2, 4, 3, 64) / lse_accum (S, 2, 4, 3)
 */
#include "fa3c.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GUARD 4096 /* wide enough that a stray write of a page or two lands in it */
#define CANARY 0xA5
#define OUT_FILL 0x5A
#define MAX_BUFS 40
#define NUM_SM 8

typedef struct {
    uint8_t    *raw, *snap;
    size_t      n; /* bytes, both guards included */
    const char *what;
} gbuf;

/* One call's arguments and every buffer they point into. */
typedef struct {
    fa3c_fwd_args a;
    gbuf          buf[MAX_BUFS];
    int           nbuf;
    fa3c_context *ctx;
} fx;

static void die(const char *msg) {
    fprintf(stderr, "test_bad_input: %s\n", msg);
    exit(2);
}

/* ----------------------------------------------------------------------------------------- */
/* Guarded buffers */

static uint8_t *fx_alloc(fx *f, const char *what, size_t bytes) {
    if (f->nbuf == MAX_BUFS) die("too many buffers");
    gbuf *g = &f->buf[f->nbuf++];
    g->n = bytes + 2 * GUARD;
    g->raw = malloc(g->n);
    g->snap = malloc(g->n);
    if (!g->raw || !g->snap) die("out of memory");
    memset(g->raw, CANARY, g->n);
    g->what = what;
    return g->raw + GUARD;
}

static size_t dsize(fa3c_dtype dt) {
    return dt == FA3C_DTYPE_E4M3 ? 1 : dt == FA3C_DTYPE_F32 || dt == FA3C_DTYPE_I32 ? 4 : 2;
}

static uint16_t bf16_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (uint16_t)(u >> 16);
}

/* A contiguous tensor in a guarded buffer. Outputs are filled with OUT_FILL; inputs with small
 * finite values (bf16/f32) or zeros (other float dtypes). */
static fa3c_tensor mk(fx *f, const char *what, fa3c_dtype dt, int ndim, const int64_t *shape, bool output) {
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= shape[i];
    uint8_t *data = fx_alloc(f, what, (size_t)numel * dsize(dt));
    if (output) memset(data, OUT_FILL, (size_t)numel * dsize(dt));
    else if (dt == FA3C_DTYPE_BF16)
        for (int64_t i = 0; i < numel; i++) ((uint16_t *)data)[i] = bf16_bits((float)((i * 7) % 17 - 8) / 16.0f);
    else if (dt == FA3C_DTYPE_F32)
        for (int64_t i = 0; i < numel; i++) ((float *)data)[i] = (float)((i * 5) % 11 - 5) / 8.0f;
    else memset(data, 0, (size_t)numel * dsize(dt));
    return fa3c_tensor_contiguous(data, dt, ndim, shape);
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})
#define NDIM(...) ((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
#define IN(f, what, dt, ...) mk(f, what, dt, NDIM(__VA_ARGS__), SHAPE(__VA_ARGS__), false)
#define OUT(f, what, dt, ...) mk(f, what, dt, NDIM(__VA_ARGS__), SHAPE(__VA_ARGS__), true)

/* int32 index tensor (n,) or (rows, n / rows) with the given values. */
static fa3c_tensor mk_idx(fx *f, const char *what, int ndim, const int64_t *shape, const int32_t *vals) {
    int64_t numel = ndim == 1 ? shape[0] : shape[0] * shape[1];
    int32_t *data = (int32_t *)fx_alloc(f, what, (size_t)numel * 4);
    memcpy(data, vals, (size_t)numel * 4);
    return fa3c_tensor_contiguous(data, FA3C_DTYPE_I32, ndim, shape);
}
#define IDX(f, what, ...)                                                                                            \
    mk_idx(f, what, 1, SHAPE((int64_t)(sizeof((int32_t[]){__VA_ARGS__}) / 4)), (const int32_t[]){__VA_ARGS__})

static void fx_free(fx *f) {
    for (int i = 0; i < f->nbuf; i++) {
        free(f->buf[i].raw);
        free(f->buf[i].snap);
    }
    f->nbuf = 0;
}

static void fx_snap(fx *f) {
    for (int i = 0; i < f->nbuf; i++) memcpy(f->buf[i].snap, f->buf[i].raw, f->buf[i].n);
}

/* First changed byte since fx_snap, described into why; guards_only ignores the bodies. */
static bool fx_changed(const fx *f, bool guards_only, char *why, size_t n) {
    for (int i = 0; i < f->nbuf; i++) {
        const gbuf *g = &f->buf[i];
        for (size_t j = 0; j < g->n; j++) {
            bool guard = j < GUARD || j >= g->n - GUARD;
            if ((guard || !guards_only) && g->raw[j] != g->snap[j]) {
                snprintf(why, n, "%s of %s changed at byte %zu",
                         j < GUARD ? "front canary" : guard ? "back canary" : "contents", g->what, j);
                return true;
            }
        }
    }
    return false;
}

static bool body_changed(const fx *f, const char *what) {
    for (int i = 0; i < f->nbuf; i++)
        if (strcmp(f->buf[i].what, what) == 0)
            return memcmp(f->buf[i].raw + GUARD, f->buf[i].snap + GUARD, f->buf[i].n - 2 * GUARD) != 0;
    return false;
}

/* ----------------------------------------------------------------------------------------- */
/* Valid bases */

enum { BATCHED, VARLEN, PAGED, SPLIT, NUM_BASES };
static const char *const base_names[NUM_BASES] = {"batched", "varlen", "paged-append-rotary", "split"};

static void base_batched(fx *f) {
    fa3c_fwd_args *a = &f->a;
    fa3c_fwd_args_init(a);
    a->q = IN(f, "q", FA3C_DTYPE_BF16, 2, 3, 4, 64);
    a->k = IN(f, "k", FA3C_DTYPE_BF16, 2, 5, 2, 64);
    a->v = IN(f, "v", FA3C_DTYPE_BF16, 2, 5, 2, 64);
    a->out = OUT(f, "out", FA3C_DTYPE_BF16, 2, 3, 4, 64);
    a->softmax_lse = OUT(f, "softmax_lse", FA3C_DTYPE_F32, 2, 4, 3);
    a->check_inputs = 0;
}

static void base_varlen(fx *f) {
    fa3c_fwd_args *a = &f->a;
    fa3c_fwd_args_init(a);
    a->q = IN(f, "q", FA3C_DTYPE_BF16, 3, 4, 64);
    a->k = IN(f, "k", FA3C_DTYPE_BF16, 5, 2, 64);
    a->v = IN(f, "v", FA3C_DTYPE_BF16, 5, 2, 64);
    a->out = OUT(f, "out", FA3C_DTYPE_BF16, 3, 4, 64);
    a->softmax_lse = OUT(f, "softmax_lse", FA3C_DTYPE_F32, 4, 3);
    a->cu_seqlens_q = IDX(f, "cu_seqlens_q", 0, 1, 3);
    a->cu_seqlens_k = IDX(f, "cu_seqlens_k", 0, 2, 5);
    a->max_seqlen_q = 2;
    a->max_seqlen_k = 3;
    a->check_inputs = 0;
}

static void base_paged(fx *f) {
    fa3c_fwd_args *a = &f->a;
    fa3c_fwd_args_init(a);
    a->q = IN(f, "q", FA3C_DTYPE_BF16, 2, 2, 4, 64);
    a->k = IN(f, "k", FA3C_DTYPE_BF16, 6, 4, 2, 64);
    a->v = IN(f, "v", FA3C_DTYPE_BF16, 6, 4, 2, 64);
    a->k_new = IN(f, "k_new", FA3C_DTYPE_BF16, 2, 2, 2, 64);
    a->v_new = IN(f, "v_new", FA3C_DTYPE_BF16, 2, 2, 2, 64);
    a->out = OUT(f, "out", FA3C_DTYPE_BF16, 2, 2, 4, 64);
    a->softmax_lse = OUT(f, "softmax_lse", FA3C_DTYPE_F32, 2, 4, 2);
    a->page_table = mk_idx(f, "page_table", 2, SHAPE(2, 3), (const int32_t[]){0, 1, 2, 3, 4, 5});
    a->seqused_k = IDX(f, "seqused_k", 3, 5);
    a->rotary_cos = IN(f, "rotary_cos", FA3C_DTYPE_BF16, 12, 16);
    a->rotary_sin = IN(f, "rotary_sin", FA3C_DTYPE_BF16, 12, 16);
    a->is_causal = 1;
    a->check_inputs = 0;
}

static void base_split(fx *f) {
    base_batched(f);
    f->a.num_splits = 3;
    fa3c_fwd_info info;
    if (fa3c_fwd_query(f->ctx, &f->a, &info) != FA3C_OK || info.num_splits < 2) die("split base: no split resolved");
    int64_t S = info.num_splits;
    f->a.out_accum = OUT(f, "out_accum", FA3C_DTYPE_F32, S, 2, 4, 3, 64);
    f->a.lse_accum = OUT(f, "lse_accum", FA3C_DTYPE_F32, S, 2, 4, 3);
}

static void build(fx *f, fa3c_context *ctx, int base) {
    memset(f, 0, sizeof *f);
    f->ctx = ctx;
    switch (base) {
    case BATCHED: base_batched(f); break;
    case VARLEN: base_varlen(f); break;
    case PAGED: base_paged(f); break;
    case SPLIT: base_split(f); break;
    }
}

/* ----------------------------------------------------------------------------------------- */
/* Reporting */

static int passed, failed;

static void report(const char *name, bool ok, const char *why) {
    if (ok) {
        printf("ok   %s\n", name);
        passed++;
    } else {
        printf("FAIL %s: %s\n", name, why);
        failed++;
    }
}

static bool ident_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* msg names arg: as "arg:" (strict) or as a whole word. */
static bool names_arg(const char *msg, const char *arg, bool strict) {
    size_t n = strlen(arg);
    for (const char *s = strstr(msg, arg); s; s = strstr(s + 1, arg)) {
        if (s > msg && ident_char(s[-1])) continue;
        if (strict ? s[n] == ':' : !ident_char(s[n])) return true;
    }
    return false;
}

/* Status and message of a call that must fail. */
static bool expect_invalid(fa3c_status st, const char *arg, bool strict, char *why, size_t n) {
    const char *msg = fa3c_last_error();
    if (st != FA3C_ERROR_INVALID_ARGUMENT) {
        snprintf(why, n, "expected INVALID_ARGUMENT, got %s (%s)", fa3c_status_string(st), msg);
        return false;
    }
    if (!names_arg(msg, arg, strict)) {
        snprintf(why, n, "message does not name '%s': \"%s\"", arg, msg);
        return false;
    }
    return true;
}

/* ----------------------------------------------------------------------------------------- */
/* fa3c_fwd cases: mutations of a base */

#define M(name) static void name(fx *f)
#define A (&f->a)

/* dtypes */
M(q_f32) { A->q.dtype = FA3C_DTYPE_F32; }
M(q_i32) { A->q.dtype = FA3C_DTYPE_I32; }
M(q_dtype_code) { A->q.dtype = (fa3c_dtype)99; }
M(k_f16) { A->k.dtype = FA3C_DTYPE_F16; }
M(v_e4m3) { A->v.dtype = FA3C_DTYPE_E4M3; }
M(out_f16) { A->out.dtype = FA3C_DTYPE_F16; }
M(lse_bf16) { A->softmax_lse.dtype = FA3C_DTYPE_BF16; }
/* presence */
M(q_absent) { A->q.dtype = FA3C_DTYPE_NONE; }
M(k_absent) { A->k.dtype = FA3C_DTYPE_NONE; }
M(v_absent) { A->v.dtype = FA3C_DTYPE_NONE; }
M(out_absent) { A->out.dtype = FA3C_DTYPE_NONE; }
/* strides */
M(q_stride) { A->q.stride[3] = 2; }
M(k_stride) { A->k.stride[3] = 2; }
M(v_stride) { A->v.stride[3] = 2; }
M(out_stride) { A->out.stride[3] = 2; }
/* ranks, sizes, descriptors */
M(q_rank3) { A->q.ndim = 3; }
M(k_rank3) { A->k.ndim = 3; }
M(out_rank3) { A->out.ndim = 3; }
M(q_ndim0) { A->q.ndim = 0; }
M(q_ndim6) { A->q.ndim = 6; }
M(v_negative) { A->v.shape[1] = -5; }
M(q_dim_huge) { A->q.shape[1] = INT64_C(1) << 33; }
M(q_numel_huge) {
    A->q.shape[0] = A->q.shape[1] = INT64_C(1) << 30;
    A->q.stride[0] = A->q.stride[1] = 0;
}
M(k_span_overflow) { A->k.stride[0] = INT64_MAX - 10; }
M(q_cuda) { A->q.device_type = FA3C_DEVICE_CUDA; }
M(out_cuda1) {
    A->out.device_type = FA3C_DEVICE_CUDA;
    A->out.device_index = 1;
}
M(lse_bad_device) { A->softmax_lse.device_type = (fa3c_device_type)7; }
M(out_null) { A->out.data = NULL; }
M(q_misaligned) { A->q.data = (char *)A->q.data + 1; }
/* q/k/v consistency */
M(k_batch3) { A->k.shape[0] = A->v.shape[0] = 3; }
M(v_sk4) { A->v.shape[1] = 4; }
M(k_d32) { A->k.shape[3] = 32; }
M(hk3) { A->k.shape[2] = A->v.shape[2] = 3; }
M(hk0) { A->k.shape[2] = A->v.shape[2] = 0; }
static void set_d(fx *f, int64_t d, int64_t dv) {
    A->q.shape[3] = A->k.shape[3] = d;
    A->v.shape[3] = A->out.shape[3] = dv;
}
M(d320) { set_d(f, 320, 320); }
M(d60) { set_d(f, 60, 60); }
M(d128_dv64) { set_d(f, 128, 64); }
M(dv520) { set_d(f, 64, 520); }
static void to_fp8(fx *f) { A->q.dtype = A->k.dtype = A->v.dtype = FA3C_DTYPE_E4M3; }
M(fp8_dv32) { to_fp8(f); set_d(f, 64, 32); }
M(fp8_d72) { to_fp8(f); set_d(f, 72, 72); }
M(fp8_out_e4m3) { to_fp8(f); A->out.dtype = FA3C_DTYPE_E4M3; }
static void paged_to_fp8(fx *f) { to_fp8(f), A->k_new.dtype = A->v_new.dtype = FA3C_DTYPE_E4M3; }
M(fp8_cos_i32) { paged_to_fp8(f), A->rotary_cos.dtype = A->rotary_sin.dtype = FA3C_DTYPE_I32; }
M(out_dv32) { A->out.shape[3] = 32; }
M(lse_transposed) {
    A->softmax_lse.shape[1] = 3;
    A->softmax_lse.shape[2] = 4;
}
/* optional tensors */
M(sinks_shape) { A->sinks = IN(f, "sinks", FA3C_DTYPE_F32, 2); }
M(sinks_i32) { A->sinks = IN(f, "sinks", FA3C_DTYPE_I32, 4); }
M(sinks_stride) {
    A->sinks = IN(f, "sinks", FA3C_DTYPE_F32, 8);
    A->sinks.shape[0] = 4;
    A->sinks.stride[0] = 2;
}
M(q_descale_bf16) { A->q_descale = IN(f, "q_descale", FA3C_DTYPE_BF16, 2, 2); }
M(k_descale_shape) { A->k_descale = IN(f, "k_descale", FA3C_DTYPE_F32, 2, 4); }
M(v_descale_rank) { A->v_descale = IN(f, "v_descale", FA3C_DTYPE_F32, 2); }
M(qv_dv64) { A->qv = IN(f, "qv", FA3C_DTYPE_BF16, 2, 3, 4, 64); }
M(qv_d128) {
    set_d(f, 128, 128);
    A->qv = IN(f, "qv", FA3C_DTYPE_BF16, 2, 3, 4, 128);
}
M(kv_batch_idx_shape) { A->kv_batch_idx = IDX(f, "kv_batch_idx", 0, 1, 1); }
M(kv_batch_idx_f32) {
    A->kv_batch_idx = IDX(f, "kv_batch_idx", 0, 1);
    A->kv_batch_idx.dtype = FA3C_DTYPE_F32;
}
M(seqused_q_f32) {
    A->seqused_q = IDX(f, "seqused_q", 3, 3);
    A->seqused_q.dtype = FA3C_DTYPE_F32;
}
M(seqused_k_shape) { A->seqused_k = IDX(f, "seqused_k", 5, 5, 5); }
M(leftpad_stride) {
    A->leftpad_k = IDX(f, "leftpad_k", 0, 0, 0, 0);
    A->leftpad_k.shape[0] = 2;
    A->leftpad_k.stride[0] = 2;
}
M(sched_f32) {
    A->scheduler_metadata = IDX(f, "scheduler_metadata", 0, 0, 0, 0);
    A->scheduler_metadata.dtype = FA3C_DTYPE_F32;
}
M(sched_2d) {
    A->scheduler_metadata = mk_idx(f, "scheduler_metadata", 2, SHAPE(2, 2), (const int32_t[]){0, 0, 0, 0});
}
M(v_new_alone) { A->v_new = IN(f, "v_new", FA3C_DTYPE_BF16, 2, 1, 2, 64); }
M(k_new_no_seqused) {
    A->k_new = IN(f, "k_new", FA3C_DTYPE_BF16, 2, 1, 2, 64);
    A->v_new = IN(f, "v_new", FA3C_DTYPE_BF16, 2, 1, 2, 64);
}
M(cos_no_k_new) {
    A->rotary_cos = IN(f, "rotary_cos", FA3C_DTYPE_BF16, 5, 16);
    A->rotary_sin = IN(f, "rotary_sin", FA3C_DTYPE_BF16, 5, 16);
}
M(sin_alone) { A->rotary_sin = IN(f, "rotary_sin", FA3C_DTYPE_BF16, 5, 16); }
M(seqlens_rotary_alone) { A->seqlens_rotary = IDX(f, "seqlens_rotary", 0, 0); }
M(accum_without_split) {
    A->num_splits = 1;
    A->out_accum = OUT(f, "out_accum", FA3C_DTYPE_F32, 1, 2, 4, 3, 64);
    A->lse_accum = OUT(f, "lse_accum", FA3C_DTYPE_F32, 1, 2, 4, 3);
}
/* scalars */
M(causal2) { A->is_causal = 2; }
M(interleaved_neg) { A->is_rotary_interleaved = -1; }
M(chunk_neg) { A->attention_chunk = -3; }
M(chunk_huge) { A->attention_chunk = INT64_C(1) << 40; }
M(softcap_neg) { A->softcap = -1.0; }
M(softcap_nan) { A->softcap = NAN; }
M(scale_inf) { A->softmax_scale = INFINITY; }
M(scale_huge) { A->softmax_scale = 1e300; }
M(splits300) { A->num_splits = 300; }
M(pack_gqa2) { A->pack_gqa = 2; }
M(sm_margin_neg) { A->sm_margin = -1; }
M(sm_margin_all) { A->sm_margin = NUM_SM; }
M(check_inputs5) { A->check_inputs = 5; }
/* split base */
M(accum_no_lse) { A->lse_accum.dtype = FA3C_DTYPE_NONE; }
M(accum_no_out) { A->out_accum.dtype = FA3C_DTYPE_NONE; }
M(accum_wrong_S) {
    A->out_accum.shape[0] += 1;
    A->lse_accum.shape[0] += 1;
}
M(accum_lse_bf16) { A->lse_accum.dtype = FA3C_DTYPE_BF16; }
M(accum_stride) { A->out_accum.stride[4] = 2; }
M(accum_lse_shape) {
    A->lse_accum.shape[2] = 3;
    A->lse_accum.shape[3] = 4;
}
M(accum_splits1) { A->num_splits = 1; }
/* varlen base */
M(cu_q_f32) { A->cu_seqlens_q.dtype = FA3C_DTYPE_F32; }
M(cu_q_no_max) { A->max_seqlen_q = -1; }
M(cu_q_2d) {
    A->cu_seqlens_q.ndim = 2;
    A->cu_seqlens_q.shape[0] = 1;
    A->cu_seqlens_q.shape[1] = 3;
    A->cu_seqlens_q.stride[1] = 1;
}
M(cu_q_stride) {
    A->cu_seqlens_q = IDX(f, "cu_seqlens_q", 0, 9, 1, 9, 3, 9);
    A->cu_seqlens_q.shape[0] = 3;
    A->cu_seqlens_q.stride[0] = 2;
}
M(cu_q_empty) { A->cu_seqlens_q.shape[0] = 0; }
M(cu_k_shape) { A->cu_seqlens_k = IDX(f, "cu_seqlens_k", 0, 2, 4, 5); }
M(cu_k_no_max) { A->max_seqlen_k = -1; }
M(cu_k_paged) { A->page_table = mk_idx(f, "page_table", 2, SHAPE(2, 1), (const int32_t[]){0, 1}); }
M(cu_k_kv_batch_idx) { A->kv_batch_idx = IDX(f, "kv_batch_idx", 0, 1); }
M(varlen_q_rank4) {
    A->q.ndim = 4;
    A->q.shape[3] = 64;
}
M(varlen_k_rank4) {
    A->k.ndim = 4;
    A->k.shape[3] = 64;
}
M(varlen_out_batched) { A->out = OUT(f, "out2", FA3C_DTYPE_BF16, 2, 2, 4, 64); }
M(varlen_lse_batched) { A->softmax_lse = OUT(f, "softmax_lse2", FA3C_DTYPE_F32, 2, 4, 2); }
M(varlen_splits256) { A->num_splits = 256; }
M(max_seqlen_q_huge) { A->max_seqlen_q = INT64_C(1) << 40; }
/* paged base */
M(pt_f32) { A->page_table.dtype = FA3C_DTYPE_F32; }
M(pt_1d) { A->page_table.ndim = 1; }
M(pt_stride) {
    A->page_table.stride[1] = 2;
    A->page_table.stride[0] = 6;
}
M(pt_rows3) { A->page_table.shape[0] = 3; }
M(paged_v_pages) { A->v.shape[0] = 5; }
M(k_new_f16) { A->k_new.dtype = FA3C_DTYPE_F16; }
M(k_new_d32) { A->k_new.shape[3] = 32; }
M(k_new_stride) { A->k_new.stride[3] = 2; }
M(v_new_absent) { A->v_new.dtype = FA3C_DTYPE_NONE; }
M(v_new_shape) { A->v_new.shape[1] = 3; }
M(k_new_sq_gt_sk) {
    A->q.shape[1] = A->out.shape[1] = 13;
    A->softmax_lse.shape[2] = 13;
}
M(cu_new_f32) {
    A->cu_seqlens_k_new = IDX(f, "cu_seqlens_k_new", 0, 2, 4);
    A->cu_seqlens_k_new.dtype = FA3C_DTYPE_F32;
}
M(cu_new_shape) { A->cu_seqlens_k_new = IDX(f, "cu_seqlens_k_new", 0, 2, 4, 4); }
M(cos_dim8) {
    A->rotary_cos.shape[1] = A->rotary_sin.shape[1] = 4;
    A->rotary_cos.stride[0] = A->rotary_sin.stride[0] = 4;
}
M(cos_dim80) {
    A->rotary_cos = IN(f, "rotary_cos2", FA3C_DTYPE_BF16, 12, 40);
    A->rotary_sin = IN(f, "rotary_sin2", FA3C_DTYPE_BF16, 12, 40);
}
M(cos_short) { A->rotary_cos.shape[0] = A->rotary_sin.shape[0] = 10; }
M(cos_f16) { A->rotary_cos.dtype = FA3C_DTYPE_F16; }
M(cos_stride) { A->rotary_cos.stride[0] = 32; }
M(cos_rank3) { A->rotary_cos.ndim = 3; A->rotary_cos.shape[2] = 1; A->rotary_cos.stride[2] = 1; }
M(sin_shape) { A->rotary_sin.shape[0] = 11; }
M(sin_absent) { A->rotary_sin.dtype = FA3C_DTYPE_NONE; }
M(sin_f32) { A->rotary_sin.dtype = FA3C_DTYPE_F32; }
M(seqlens_rotary_f32) {
    A->seqlens_rotary = IDX(f, "seqlens_rotary", 0, 0);
    A->seqlens_rotary.dtype = FA3C_DTYPE_F32;
}
M(paged_no_seqused_k) { A->seqused_k.dtype = FA3C_DTYPE_NONE; }
/* index data (check_inputs) */
static void set_idx(fa3c_tensor *t, int64_t i, int32_t v) { ((int32_t *)t->data)[i * t->stride[0]] = v; }
M(cu_q_decreasing) {
    set_idx(&A->cu_seqlens_q, 1, 2);
    set_idx(&A->cu_seqlens_q, 2, 1);
}
M(cu_q_past_end) { set_idx(&A->cu_seqlens_q, 2, 4); }
M(cu_k_negative) { set_idx(&A->cu_seqlens_k, 0, -1); }
M(seqused_q_over) { A->seqused_q = IDX(f, "seqused_q", 1, 3); }
M(seqused_k_over_varlen) { A->seqused_k = IDX(f, "seqused_k", 3, 1); }
M(page_id_over) { ((int32_t *)A->page_table.data)[4] = 6; }
M(page_id_negative) { ((int32_t *)A->page_table.data)[0] = -1; }
M(seqused_k_over_paged) { set_idx(&A->seqused_k, 0, 11); }
M(kv_batch_idx_over) { A->kv_batch_idx = IDX(f, "kv_batch_idx", 0, 2); }
M(leftpad_over_seqused) { A->leftpad_k = IDX(f, "leftpad_k", 4, 0); }
M(seqlens_rotary_over) { A->seqlens_rotary = IDX(f, "seqlens_rotary", 11, 0); }
M(cu_new_decreasing) {
    A->k_new = IN(f, "k_new2", FA3C_DTYPE_BF16, 3, 2, 64);
    A->v_new = IN(f, "v_new2", FA3C_DTYPE_BF16, 3, 2, 64);
    A->cu_seqlens_k_new = IDX(f, "cu_seqlens_k_new", 0, 2, 1);
}
/* q rotated at seqused_k + i (causal) reaches past the rotary tables although the keys fit. */
M(rotary_q_positions) {
    A->q = IN(f, "q2", FA3C_DTYPE_BF16, 2, 3, 4, 64);
    A->out = OUT(f, "out2", FA3C_DTYPE_BF16, 2, 3, 4, 64);
    A->softmax_lse = OUT(f, "softmax_lse2", FA3C_DTYPE_F32, 2, 4, 3);
    set_idx(&A->seqused_k, 1, 10);
}

typedef struct {
    const char *name;
    int         base;
    void (*mut)(fx *);
    const char *arg;  /* the argument the message must name */
    bool        query; /* through fa3c_fwd_query instead of fa3c_fwd */
    bool        data; /* index-data error: check_inputs = 1 finds it, validation with 0 passes */
} fwd_case;

static const fwd_case fwd_cases[] = {
    {"q dtype f32", BATCHED, q_f32, "q", 0, 0},
    {"q dtype i32 (query)", BATCHED, q_i32, "q", 1, 0},
    {"q dtype code 99", BATCHED, q_dtype_code, "q", 0, 0},
    {"k dtype differs from q", BATCHED, k_f16, "k", 0, 0},
    {"v dtype differs from q", BATCHED, v_e4m3, "v", 0, 0},
    {"out dtype differs from q", BATCHED, out_f16, "out", 0, 0},
    {"softmax_lse dtype bf16", BATCHED, lse_bf16, "softmax_lse", 0, 0},
    {"q absent", BATCHED, q_absent, "q", 0, 0},
    {"k absent", BATCHED, k_absent, "k", 0, 0},
    {"v absent", BATCHED, v_absent, "v", 0, 0},
    {"out absent", BATCHED, out_absent, "out", 0, 0},
    {"q stride(-1) 2", BATCHED, q_stride, "q", 0, 0},
    {"k stride(-1) 2", BATCHED, k_stride, "k", 0, 0},
    {"v stride(-1) 2", BATCHED, v_stride, "v", 0, 0},
    {"out stride(-1) 2", BATCHED, out_stride, "out", 0, 0},
    {"q rank 3 without cu_seqlens_q", BATCHED, q_rank3, "q", 0, 0},
    {"k rank 3 without cu_seqlens_k", BATCHED, k_rank3, "k", 0, 0},
    {"out rank 3", BATCHED, out_rank3, "out", 0, 0},
    {"q ndim 0", BATCHED, q_ndim0, "q", 0, 0},
    {"q ndim 6", BATCHED, q_ndim6, "q", 0, 0},
    {"v negative size", BATCHED, v_negative, "v", 0, 0},
    {"q size 2^33", BATCHED, q_dim_huge, "q", 0, 0},
    {"q 2^68 broadcast elements", BATCHED, q_numel_huge, "q", 0, 0},
    {"k strides overflow int64", BATCHED, k_span_overflow, "k", 0, 0},
    {"q on cuda", BATCHED, q_cuda, "q", 0, 0},
    {"out on cuda:1", BATCHED, out_cuda1, "out", 0, 0},
    {"softmax_lse unknown device", BATCHED, lse_bad_device, "softmax_lse", 0, 0},
    {"out NULL data", BATCHED, out_null, "out", 0, 0},
    {"q misaligned data", BATCHED, q_misaligned, "q", 0, 0},
    {"k batch 3 without kv_batch_idx", BATCHED, k_batch3, "k", 0, 0},
    {"v s_k differs from k", BATCHED, v_sk4, "v", 0, 0},
    {"k head dim differs from q", BATCHED, k_d32, "k", 0, 0},
    {"h % h_k != 0", BATCHED, hk3, "k", 0, 0},
    {"h_k 0 with h 4", BATCHED, hk0, "k", 0, 0},
    {"d 320 > 256", BATCHED, d320, "q", 0, 0},
    {"d 60 not a multiple of 8", BATCHED, d60, "q", 0, 0},
    {"(d, dv) = (128, 64) not allowed", BATCHED, d128_dv64, "v", 0, 0},
    {"dv 520 > 512", BATCHED, dv520, "v", 0, 0},
    {"fp8 d 64 with dv 32 (no kernel)", BATCHED, fp8_dv32, "v", 0, 0},
    {"fp8 d 72 not a multiple of 16", BATCHED, fp8_d72, "q", 0, 0},
    {"fp8 out e4m3 (must be bf16)", BATCHED, fp8_out_e4m3, "out", 0, 0},
    {"fp8 rotary_cos dtype i32", PAGED, fp8_cos_i32, "rotary_cos", 0, 0},
    {"out dv 32", BATCHED, out_dv32, "out", 0, 0},
    {"softmax_lse (b, s_q, h)", BATCHED, lse_transposed, "softmax_lse", 0, 0},
    {"sinks shape (2,)", BATCHED, sinks_shape, "sinks", 0, 0},
    {"sinks dtype i32", BATCHED, sinks_i32, "sinks", 0, 0},
    {"sinks stride 2", BATCHED, sinks_stride, "sinks", 0, 0},
    {"q_descale dtype bf16", BATCHED, q_descale_bf16, "q_descale", 0, 0},
    {"k_descale shape (b, h)", BATCHED, k_descale_shape, "k_descale", 0, 0},
    {"v_descale rank 1", BATCHED, v_descale_rank, "v_descale", 0, 0},
    {"qv with dv 64", BATCHED, qv_dv64, "qv", 0, 0},
    {"qv with d 128", BATCHED, qv_d128, "qv", 0, 0},
    {"kv_batch_idx shape (3,)", BATCHED, kv_batch_idx_shape, "kv_batch_idx", 0, 0},
    {"kv_batch_idx dtype f32", BATCHED, kv_batch_idx_f32, "kv_batch_idx", 0, 0},
    {"seqused_q dtype f32", BATCHED, seqused_q_f32, "seqused_q", 0, 0},
    {"seqused_k shape (3,)", BATCHED, seqused_k_shape, "seqused_k", 0, 0},
    {"leftpad_k stride 2", BATCHED, leftpad_stride, "leftpad_k", 0, 0},
    {"scheduler_metadata dtype f32", BATCHED, sched_f32, "scheduler_metadata", 0, 0},
    {"scheduler_metadata 2-D", BATCHED, sched_2d, "scheduler_metadata", 0, 0},
    {"v_new without k_new", BATCHED, v_new_alone, "v_new", 0, 0},
    {"k_new without seqused_k", BATCHED, k_new_no_seqused, "seqused_k", 0, 0},
    {"rotary_cos without k_new", BATCHED, cos_no_k_new, "rotary_cos", 0, 0},
    {"rotary_sin without rotary_cos", BATCHED, sin_alone, "rotary_sin", 0, 0},
    {"seqlens_rotary without rotary", BATCHED, seqlens_rotary_alone, "seqlens_rotary", 0, 0},
    {"out_accum with num_splits 1", BATCHED, accum_without_split, "out_accum", 0, 0},
    {"is_causal 2", BATCHED, causal2, "is_causal", 0, 0},
    {"is_rotary_interleaved -1", BATCHED, interleaved_neg, "is_rotary_interleaved", 0, 0},
    {"attention_chunk -3", BATCHED, chunk_neg, "attention_chunk", 0, 0},
    {"attention_chunk 2^40", BATCHED, chunk_huge, "attention_chunk", 0, 0},
    {"softcap -1", BATCHED, softcap_neg, "softcap", 0, 0},
    {"softcap NaN", BATCHED, softcap_nan, "softcap", 0, 0},
    {"softmax_scale inf", BATCHED, scale_inf, "softmax_scale", 0, 0},
    {"softmax_scale 1e300 (not a float)", BATCHED, scale_huge, "softmax_scale", 0, 0},
    {"num_splits 300", BATCHED, splits300, "num_splits", 0, 0},
    {"pack_gqa 2", BATCHED, pack_gqa2, "pack_gqa", 0, 0},
    {"sm_margin -1", BATCHED, sm_margin_neg, "sm_margin", 0, 0},
    {"sm_margin = SM count", BATCHED, sm_margin_all, "sm_margin", 1, 0},
    {"check_inputs 5", BATCHED, check_inputs5, "check_inputs", 0, 0},
    {"lse_accum missing", SPLIT, accum_no_lse, "lse_accum", 0, 0},
    {"out_accum missing", SPLIT, accum_no_out, "out_accum", 0, 0},
    {"out_accum S != resolved num_splits", SPLIT, accum_wrong_S, "out_accum", 0, 0},
    {"lse_accum dtype bf16", SPLIT, accum_lse_bf16, "lse_accum", 0, 0},
    {"out_accum stride(-1) 2", SPLIT, accum_stride, "out_accum", 0, 0},
    {"lse_accum (S, b, s_q, h)", SPLIT, accum_lse_shape, "lse_accum", 0, 0},
    {"out_accum but num_splits 1", SPLIT, accum_splits1, "out_accum", 0, 0},
    {"cu_seqlens_q dtype f32", VARLEN, cu_q_f32, "cu_seqlens_q", 0, 0},
    {"cu_seqlens_q without max_seqlen_q", VARLEN, cu_q_no_max, "max_seqlen_q", 0, 0},
    {"cu_seqlens_q 2-D", VARLEN, cu_q_2d, "cu_seqlens_q", 0, 0},
    {"cu_seqlens_q stride 2", VARLEN, cu_q_stride, "cu_seqlens_q", 0, 0},
    {"cu_seqlens_q shape (0,)", VARLEN, cu_q_empty, "cu_seqlens_q", 0, 0},
    {"cu_seqlens_k shape (b + 2,)", VARLEN, cu_k_shape, "cu_seqlens_k", 0, 0},
    {"cu_seqlens_k without max_seqlen_k", VARLEN, cu_k_no_max, "max_seqlen_k", 0, 0},
    {"cu_seqlens_k with page_table", VARLEN, cu_k_paged, "cu_seqlens_k", 0, 0},
    {"cu_seqlens_k with kv_batch_idx", VARLEN, cu_k_kv_batch_idx, "cu_seqlens_k", 0, 0},
    {"varlen q rank 4", VARLEN, varlen_q_rank4, "q", 0, 0},
    {"varlen k rank 4", VARLEN, varlen_k_rank4, "k", 0, 0},
    {"varlen out batched layout", VARLEN, varlen_out_batched, "out", 0, 0},
    {"varlen softmax_lse batched layout", VARLEN, varlen_lse_batched, "softmax_lse", 0, 0},
    {"varlen num_splits 256", VARLEN, varlen_splits256, "num_splits", 0, 0},
    {"max_seqlen_q 2^40", VARLEN, max_seqlen_q_huge, "max_seqlen_q", 0, 0},
    {"page_table dtype f32", PAGED, pt_f32, "page_table", 0, 0},
    {"page_table 1-D", PAGED, pt_1d, "page_table", 0, 0},
    {"page_table stride(-1) 2", PAGED, pt_stride, "page_table", 0, 0},
    {"page_table 3 rows without kv_batch_idx", PAGED, pt_rows3, "page_table", 0, 0},
    {"paged v num_pages differs from k", PAGED, paged_v_pages, "v", 0, 0},
    {"k_new dtype f16", PAGED, k_new_f16, "k_new", 0, 0},
    {"k_new head dim 32", PAGED, k_new_d32, "k_new", 0, 0},
    {"k_new stride(-1) 2", PAGED, k_new_stride, "k_new", 0, 0},
    {"k_new without v_new", PAGED, v_new_absent, "v_new", 0, 0},
    {"v_new s_new differs from k_new", PAGED, v_new_shape, "v_new", 0, 0},
    {"k_new with s_q > s_k", PAGED, k_new_sq_gt_sk, "k_new", 0, 0},
    {"cu_seqlens_k_new dtype f32", PAGED, cu_new_f32, "cu_seqlens_k_new", 0, 0},
    {"cu_seqlens_k_new shape (b + 2,)", PAGED, cu_new_shape, "cu_seqlens_k_new", 0, 0},
    {"rotary_dim 8 not a multiple of 16", PAGED, cos_dim8, "rotary_cos", 0, 0},
    {"rotary_dim 80 > d", PAGED, cos_dim80, "rotary_cos", 0, 0},
    {"rotary s_ro < s_k with page_table", PAGED, cos_short, "rotary_cos", 0, 0},
    {"rotary_cos dtype f16", PAGED, cos_f16, "rotary_cos", 0, 0},
    {"rotary_cos not contiguous", PAGED, cos_stride, "rotary_cos", 0, 0},
    {"rotary_cos rank 3", PAGED, cos_rank3, "rotary_cos", 0, 0},
    {"rotary_sin shape differs", PAGED, sin_shape, "rotary_sin", 0, 0},
    {"rotary_cos without rotary_sin", PAGED, sin_absent, "rotary_sin", 0, 0},
    {"rotary_sin dtype f32", PAGED, sin_f32, "rotary_sin", 0, 0},
    {"seqlens_rotary dtype f32", PAGED, seqlens_rotary_f32, "seqlens_rotary", 0, 0},
    {"paged append without seqused_k", PAGED, paged_no_seqused_k, "seqused_k", 0, 0},
    {"check_inputs: cu_seqlens_q decreasing", VARLEN, cu_q_decreasing, "cu_seqlens_q", 0, 1},
    {"check_inputs: cu_seqlens_q past total_q", VARLEN, cu_q_past_end, "cu_seqlens_q", 0, 1},
    {"check_inputs: cu_seqlens_k negative", VARLEN, cu_k_negative, "cu_seqlens_k", 0, 1},
    {"check_inputs: seqused_q > sequence rows", VARLEN, seqused_q_over, "seqused_q", 0, 1},
    {"check_inputs: seqused_k > cu_seqlens_k span", VARLEN, seqused_k_over_varlen, "seqused_k", 0, 1},
    {"check_inputs: page id >= num_pages", PAGED, page_id_over, "page_table", 0, 1},
    {"check_inputs: page id negative", PAGED, page_id_negative, "page_table", 0, 1},
    {"check_inputs: seqused_k + s_new > capacity", PAGED, seqused_k_over_paged, "seqused_k", 0, 1},
    {"check_inputs: kv_batch_idx >= b_k", PAGED, kv_batch_idx_over, "kv_batch_idx", 0, 1},
    {"check_inputs: leftpad_k > seqused_k", PAGED, leftpad_over_seqused, "seqused_k", 0, 1},
    {"check_inputs: seqlens_rotary + s_new > s_ro", PAGED, seqlens_rotary_over, "seqlens_rotary", 0, 1},
    {"check_inputs: cu_seqlens_k_new decreasing", PAGED, cu_new_decreasing, "cu_seqlens_k_new", 0, 1},
    {"check_inputs: causal q rotary positions > s_ro", PAGED, rotary_q_positions, "rotary_cos", 0, 1},
};

static void run_fwd_case(fa3c_context *ctx, const fwd_case *c) {
    fx f;
    char why[512] = "";
    build(&f, ctx, c->base);
    c->mut(&f);
    if (c->data) f.a.check_inputs = 1;
    fx_snap(&f);
    fa3c_fwd_info info;
    fa3c_status st = c->query ? fa3c_fwd_query(ctx, &f.a, &info) : fa3c_fwd(ctx, &f.a);
    bool ok = expect_invalid(st, c->arg, true, why, sizeof why) && !fx_changed(&f, false, why, sizeof why);
    if (ok && c->data) {
        f.a.check_inputs = 0;
        st = fa3c_fwd_query(ctx, &f.a, &info);
        if (st != FA3C_OK) {
            ok = false;
            snprintf(why, sizeof why, "with check_inputs = 0 validation must pass, got %s: %s", fa3c_status_string(st),
                     fa3c_last_error());
        }
    }
    report(c->name, ok, why);
    fx_free(&f);
}

/* The valid bases run, write their outputs (and the cache when appending) and nothing else. */
static void run_base(fa3c_context *ctx, int base) {
    fx f;
    char name[96], why[512] = "";
    snprintf(name, sizeof name, "valid base %s runs", base_names[base]);
    build(&f, ctx, base);
    fx_snap(&f);
    fa3c_status st = fa3c_fwd(ctx, &f.a);
    bool ok = st == FA3C_OK;
    if (!ok) snprintf(why, sizeof why, "%s: %s", fa3c_status_string(st), fa3c_last_error());
    if (ok && fx_changed(&f, true, why, sizeof why)) ok = false;
    if (ok && !body_changed(&f, "out")) ok = false, snprintf(why, sizeof why, "out not written");
    if (ok && !body_changed(&f, "softmax_lse")) ok = false, snprintf(why, sizeof why, "softmax_lse not written");
    if (ok && base == PAGED && !body_changed(&f, "k")) ok = false, snprintf(why, sizeof why, "k cache not appended");
    if (ok && base == SPLIT && !body_changed(&f, "out_accum"))
        ok = false, snprintf(why, sizeof why, "out_accum not written");
    report(name, ok, why);
    fx_free(&f);
}

/* ----------------------------------------------------------------------------------------- */
/* Valid edge cases that must not be rejected */

M(cu_new_garbage) {
    A->cu_seqlens_k_new.dtype = FA3C_DTYPE_F32;
    A->cu_seqlens_k_new.ndim = 0;
}
M(unused_pages_garbage) {
    A->check_inputs = 1;
    ((int32_t *)A->page_table.data)[2] = -1; /* sequence 0 uses rows [0, 5): pages 0 and 1 only */
    ((int32_t *)A->page_table.data)[5] = 1000;
}
M(descale_bf16) { A->q_descale = IN(f, "q_descale", FA3C_DTYPE_F32, 2, 2); }
M(windows_any) {
    A->window_size_left = -7;
    A->window_size_right = INT64_MAX;
}
M(check_inputs_on) { A->check_inputs = 1; }
M(fp8_cos_f32) {
    paged_to_fp8(f);
    A->check_inputs = 1;
    A->rotary_cos = IN(f, "rotary_cos_f32", FA3C_DTYPE_F32, 12, 16);
    A->rotary_sin = IN(f, "rotary_sin_f32", FA3C_DTYPE_F32, 12, 16);
}
M(zero_batch) {
    A->q.shape[0] = A->k.shape[0] = A->v.shape[0] = A->out.shape[0] = A->softmax_lse.shape[0] = 0;
}
M(zero_heads) {
    A->q.shape[2] = A->out.shape[2] = A->softmax_lse.shape[1] = 0;
    A->k.shape[2] = A->v.shape[2] = 0;
    A->q.data = A->k.data = A->v.data = A->out.data = A->softmax_lse.data = NULL;
}

typedef struct {
    const char *name;
    int         base;
    void (*mut)(fx *);
    bool        untouched; /* the call must write nothing (empty problem) */
} ok_case;

static const ok_case ok_cases[] = {
    {"accepted: cu_seqlens_k_new garbage without k_new (ignored)", BATCHED, cu_new_garbage, false},
    {"accepted: check_inputs with unused page-table entries out of range", PAGED, unused_pages_garbage, false},
    {"accepted: descales with bf16 inputs", BATCHED, descale_bf16, false},
    {"accepted: batched base with check_inputs", BATCHED, check_inputs_on, false},
    {"accepted: varlen base with check_inputs", VARLEN, check_inputs_on, false},
    {"accepted: paged base with check_inputs", PAGED, check_inputs_on, false},
    {"accepted: e4m3 append with f32 rotary tables", PAGED, fp8_cos_f32, false},
    {"accepted: window sizes -7 and INT64_MAX", BATCHED, windows_any, false},
    {"accepted: zero batch writes nothing", BATCHED, zero_batch, true},
    {"accepted: zero heads with NULL data writes nothing", BATCHED, zero_heads, true},
};

static void run_ok_case(fa3c_context *ctx, const ok_case *c) {
    fx f;
    char why[512] = "";
    build(&f, ctx, c->base);
    c->mut(&f);
    fx_snap(&f);
    fa3c_status st = fa3c_fwd(ctx, &f.a);
    bool ok = st == FA3C_OK;
    if (!ok) snprintf(why, sizeof why, "expected OK, got %s: %s", fa3c_status_string(st), fa3c_last_error());
    if (ok && fx_changed(&f, !c->untouched, why, sizeof why)) ok = false;
    report(c->name, ok, why);
    fx_free(&f);
}

/* ----------------------------------------------------------------------------------------- */
/* Entry points validated elsewhere: fa3c_fwd (NULLs), fa3c_combine, fa3c_merge_state,
 * fa3c_get_scheduler_metadata. */

static void run_null_cases(fa3c_context *ctx) {
    fx f;
    char why[512] = "";
    build(&f, ctx, BATCHED);
    fx_snap(&f);
    bool ok = expect_invalid(fa3c_fwd(NULL, &f.a), "ctx", false, why, sizeof why) &&
              !fx_changed(&f, false, why, sizeof why);
    report("fa3c_fwd NULL ctx", ok, why);
    ok = expect_invalid(fa3c_fwd(ctx, NULL), "args", false, why, sizeof why);
    report("fa3c_fwd NULL args", ok, why);
    ok = expect_invalid(fa3c_fwd_query(ctx, &f.a, NULL), "info", false, why, sizeof why) &&
         !fx_changed(&f, false, why, sizeof why);
    report("fa3c_fwd_query NULL info", ok, why);
    fx_free(&f);
}

/* combine: out_partial (S, b, s, h, dv) = (3, 2, 3, 4, 64); lse_partial (S, b, s, h) with
 * stride(-2) == 1 (a view of (S, b, h, s)); out (b, s, h, dv) bf16; lse (b, s, h). */
typedef struct {
    fa3c_tensor op, lp, out, lse;
} combine_args;

static void combine_base(fx *f, combine_args *c) {
    memset(f, 0, sizeof *f);
    c->op = IN(f, "out_partial", FA3C_DTYPE_F32, 3, 2, 3, 4, 64);
    c->lp = IN(f, "lse_partial", FA3C_DTYPE_F32, 3, 2, 4, 3);
    c->lp.shape[2] = 3, c->lp.shape[3] = 4;
    c->lp.stride[2] = 1, c->lp.stride[3] = 3;
    c->out = OUT(f, "out", FA3C_DTYPE_BF16, 2, 3, 4, 64);
    c->lse = OUT(f, "lse", FA3C_DTYPE_F32, 2, 3, 4);
}

static void run_combine_cases(fa3c_context *ctx) {
    enum { BASE, OP_BF16, LP_SHAPE, OUT_SHAPE, LSE_SHAPE, S300, OUT_I32, LP_ABSENT, N };
    static const char *const names[N] = {"combine: valid base runs",           "combine: out_partial dtype bf16",
                                   "combine: lse_partial b differs",     "combine: out dv differs",
                                   "combine: lse h differs",             "combine: 300 splits",
                                   "combine: out dtype i32",             "combine: lse_partial absent"};
    static const char *const args[N] = {"", "out_partial", "lse_partial", "out", "lse", "out_partial", "out", "lse_partial"};
    for (int i = 0; i < N; i++) {
        fx f;
        combine_args c;
        char why[512] = "";
        combine_base(&f, &c);
        switch (i) {
        case OP_BF16: c.op.dtype = FA3C_DTYPE_BF16; break;
        case LP_SHAPE: c.lp.shape[1] = 1; break;
        case OUT_SHAPE: c.out.shape[3] = 32; break;
        case LSE_SHAPE: c.lse.shape[2] = 5; break;
        case S300: c.op.shape[0] = c.lp.shape[0] = 300; break;
        case OUT_I32: c.out.dtype = FA3C_DTYPE_I32; break;
        case LP_ABSENT: c.lp.dtype = FA3C_DTYPE_NONE; break;
        }
        fx_snap(&f);
        fa3c_status st = fa3c_combine(ctx, &c.op, &c.lp, &c.out, &c.lse);
        bool ok;
        if (i == BASE) {
            ok = st == FA3C_OK;
            if (!ok) snprintf(why, sizeof why, "%s: %s", fa3c_status_string(st), fa3c_last_error());
            if (ok && fx_changed(&f, true, why, sizeof why)) ok = false;
            if (ok && !body_changed(&f, "out")) ok = false, snprintf(why, sizeof why, "out not written");
        } else {
            ok = expect_invalid(st, args[i], false, why, sizeof why) && !fx_changed(&f, false, why, sizeof why);
        }
        report(names[i], ok, why);
        fx_free(&f);
    }
}

/* merge_state: out_a/out_b (n, h, dv) = (3, 4, 64) f32, lse_a/lse_b (3, 4), out bf16, lse. */
static void run_merge_cases(fa3c_context *ctx) {
    enum { BASE, OUTB_SHAPE, LSEA_BF16, LSEB_SHAPE, OUT_STRIDE, OUTA_ABSENT, LSE_RANK, N };
    static const char *const names[N] = {"merge_state: valid base runs",     "merge_state: out_b dv differs",
                                   "merge_state: lse_a dtype bf16",    "merge_state: lse_b h differs",
                                   "merge_state: out stride(-1) 2",    "merge_state: out_a absent",
                                   "merge_state: lse rank 3"};
    static const char *const args[N] = {"", "out_b", "lse_a", "lse_b", "out", "out_a", "lse"};
    for (int i = 0; i < N; i++) {
        fx f;
        char why[512] = "";
        memset(&f, 0, sizeof f);
        fa3c_tensor oa = IN(&f, "out_a", FA3C_DTYPE_F32, 3, 4, 64), ob = IN(&f, "out_b", FA3C_DTYPE_F32, 3, 4, 64);
        fa3c_tensor la = IN(&f, "lse_a", FA3C_DTYPE_F32, 3, 4), lb = IN(&f, "lse_b", FA3C_DTYPE_F32, 3, 4);
        fa3c_tensor o = OUT(&f, "out", FA3C_DTYPE_BF16, 3, 4, 64), l = OUT(&f, "lse", FA3C_DTYPE_F32, 3, 4);
        switch (i) {
        case OUTB_SHAPE: ob.shape[2] = 32; break;
        case LSEA_BF16: la.dtype = FA3C_DTYPE_BF16; break;
        case LSEB_SHAPE: lb.shape[1] = 5; break;
        case OUT_STRIDE: o.stride[2] = 2; break;
        case OUTA_ABSENT: oa.dtype = FA3C_DTYPE_NONE; break;
        case LSE_RANK: l.ndim = 3, l.shape[2] = 1, l.stride[2] = 1; break;
        }
        fx_snap(&f);
        fa3c_status st = fa3c_merge_state(ctx, &oa, &la, &ob, &lb, &o, &l);
        bool ok;
        if (i == BASE) {
            ok = st == FA3C_OK;
            if (!ok) snprintf(why, sizeof why, "%s: %s", fa3c_status_string(st), fa3c_last_error());
            if (ok && fx_changed(&f, true, why, sizeof why)) ok = false;
            if (ok && !body_changed(&f, "out")) ok = false, snprintf(why, sizeof why, "out not written");
        } else {
            ok = expect_invalid(st, args[i], false, why, sizeof why) && !fx_changed(&f, false, why, sizeof why);
        }
        report(names[i], ok, why);
        fx_free(&f);
    }
}

/* get_scheduler_metadata: a paged decode, b 2, s_q 1, s_k 12, h 4, h_k 2, d 64, page_size 4. */
static void run_scheduler_cases(fa3c_context *ctx) {
    enum { BASE, NO_SEQUSED, HEADS, HEADDIM, SEQUSED_SHAPE, OUT_SIZE, OUT_F32, SPLITS, N };
    static const char *const names[N] = {"scheduler: valid base runs",          "scheduler: seqused_k absent",
                                   "scheduler: num_heads_q % num_heads_kv", "scheduler: headdim 300",
                                   "scheduler: seqused_k shape (3,)",     "scheduler: out size differs",
                                   "scheduler: out dtype f32",            "scheduler: num_splits 256"};
    static const char *const args[N] = {"", "seqused_k", "num_heads_q", "headdim", "seqused_k", "out", "out", "num_splits"};
    for (int i = 0; i < N; i++) {
        fx f;
        char why[512] = "";
        memset(&f, 0, sizeof f);
        fa3c_scheduler_args sa;
        fa3c_scheduler_args_init(&sa);
        sa.batch_size = 2, sa.max_seqlen_q = 1, sa.max_seqlen_k = 12;
        sa.num_heads_q = 4, sa.num_heads_kv = 2, sa.headdim = 64, sa.page_size = 4;
        sa.seqused_k = IDX(&f, "seqused_k", 3, 5);
        int64_t size = 0;
        fa3c_status st = fa3c_scheduler_metadata_size(ctx, &sa, &size);
        if (st != FA3C_OK || size <= 0) {
            snprintf(why, sizeof why, "metadata size of the base: %s: %s", fa3c_status_string(st), fa3c_last_error());
            report(names[i], false, why);
            fx_free(&f);
            continue;
        }
        fa3c_tensor out = OUT(&f, "out", FA3C_DTYPE_I32, size);
        switch (i) {
        case NO_SEQUSED: sa.seqused_k.dtype = FA3C_DTYPE_NONE; break;
        case HEADS: sa.num_heads_kv = 3; break;
        case HEADDIM: sa.headdim = 300; break;
        case SEQUSED_SHAPE: sa.seqused_k = IDX(&f, "seqused_k2", 3, 5, 5); break;
        case OUT_SIZE: out.shape[0] = size - 1; break;
        case OUT_F32: out.dtype = FA3C_DTYPE_F32; break;
        case SPLITS: sa.num_splits = 256; break;
        }
        fx_snap(&f);
        st = fa3c_get_scheduler_metadata(ctx, &sa, &out);
        bool ok;
        if (i == BASE) {
            ok = st == FA3C_OK;
            if (!ok) snprintf(why, sizeof why, "%s: %s", fa3c_status_string(st), fa3c_last_error());
            if (ok && fx_changed(&f, true, why, sizeof why)) ok = false;
            if (ok && !body_changed(&f, "out")) ok = false, snprintf(why, sizeof why, "out not written");
        } else {
            ok = expect_invalid(st, args[i], false, why, sizeof why) && !fx_changed(&f, false, why, sizeof why);
        }
        report(names[i], ok, why);
        fx_free(&f);
    }
}

int main(void) {
    fa3c_context_options opt;
    fa3c_context_options_init(&opt);
    opt.backend = "cpu-ref";
    opt.num_threads = 2;
    opt.num_sm = NUM_SM;
    opt.check_inputs = 0;
    fa3c_context *ctx = NULL;
    if (fa3c_context_create(&opt, &ctx) != FA3C_OK) {
        fprintf(stderr, "test_bad_input: cannot create a cpu-ref context: %s\n", fa3c_last_error());
        return 1;
    }
    for (int b = 0; b < NUM_BASES; b++) run_base(ctx, b);
    for (size_t i = 0; i < sizeof fwd_cases / sizeof fwd_cases[0]; i++) run_fwd_case(ctx, &fwd_cases[i]);
    for (size_t i = 0; i < sizeof ok_cases / sizeof ok_cases[0]; i++) run_ok_case(ctx, &ok_cases[i]);
    run_null_cases(ctx);
    run_combine_cases(ctx);
    run_merge_cases(ctx);
    run_scheduler_cases(ctx);
    fa3c_context_destroy(ctx);
    printf("test_bad_input: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
