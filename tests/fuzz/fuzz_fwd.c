/*
 * libFuzzer target over fa3c's argument validation and its two CPU forwards (cpu-ref, cpu), plus
 * fa3c_fwd_query, fa3c_get_scheduler_metadata, fa3c_combine and fa3c_merge_state.
 *
 * The input bytes describe one call: ranks, shapes, strides (padded, transposed, negative, zero,
 * huge), dtypes, flags, windows, splits, pack_gqa, softcap, page size and the index data
 * (cu_seqlens_*, seqused_*, page_table, kv_batch_idx, leftpad_k, seqlens_rotary, scheduler
 * metadata), followed by up to 8 perturbation records that break one field each (format below;
 * tests/fuzz/make_corpus.py writes the seed corpus in it). Sizes stay small so one input runs in
 * well under a millisecond.
 *
 * Every tensor lives alone in an mmap'd region: a PROT_NONE page, a canary filling the start of
 * the data page, the data ending exactly at a second PROT_NONE page. The call is made on cpu-ref
 * and on cpu with byte-identical copies of every buffer. Violations trap (__builtin_trap):
 *   - a status outside the enum, or a failure with an empty fa3c_last_error(), or a success that
 *     leaves one;
 *   - a crash, a guard-page fault, an ASan/UBSan report, or a damaged canary;
 *   - a failed call that wrote anything; a successful one that changed an input, or changed a byte
 *     of an output buffer that no element of the output view covers (caches: when not appending);
 *   - a tensor that spans more than 2^63 bytes accepted;
 *   - fa3c_fwd_query and fa3c_fwd disagreeing, or the two backends disagreeing on the status, or
 *     on out / lse / out_accum / lse_accum / the appended cache beyond a dtype tolerance (skipped
 *     when the inputs hold NaN/inf or an output has a zero stride), or on scheduler metadata.
 * Index data is only trusted by the library with check_inputs: a call whose index data
 * check_inputs=1 rejects is made only when the caller asked for the check (otherwise reading out
 * of bounds is the caller's documented responsibility and the forward is skipped).
 *
 * Built by tests/fuzz/run_fuzz.sh with clang -fsanitize=fuzzer,address,undefined. With
 * -DFA3C_FUZZ_STANDALONE it has a main() that replays files and directories of inputs (the
 * corpus ctest under gcc).
 *
 * Input format (bytes past the end read as 0; "v" is the byte):
 *   [0] op: v % 10 < 7 forward, 7 combine, 8 merge_state, 9 scheduler metadata only
 * forward and scheduler:
 *   [1] mode: 1 varlen_q, 2 varlen_k, 4 paged, 8 append, 16 seqused_k, 32 seqused_q, 64 leftpad_k,
 *       128 kv_batch_idx
 *   [2] features: 1 causal, 2 local window, 4 chunk, 8 softcap, 16 sinks, 32 qv, 64 rotary,
 *       128 rotary interleaved
 *   [3] extras: 1 no softmax_lse, 2 out_accum, 4 cu_seqlens_k_new, 8 scheduler_metadata,
 *       16|32 metadata kind (0 computed, 1 computed for num_splits + 1, 2 random words, 3 short),
 *       64 seqlens_rotary, 128 a NaN/inf in q or k
 *   [4] options: 0..3 check_inputs (0: 1, 1: 0, else -1), 4 descales, 8 softmax_scale,
 *       16|32 sinks dtype (f32, bf16, f16, e4m3), 64 padded strides, 128 negative strides
 *   [5] dtype: 0 bf16, 1 f16, 2 e4m3, else a wrong one   [6] b = v % 5
 *   [7] s_q = 1 + v % 9 (255: 0)   [8] s_k = 1 + v % 40 (255: 0)   [9] s_new = v % 5
 *   [10] h_k = 1 + v % 3 (255: 0)  [11] h = h_k * (1 + v % 4)   [12] d, [13] dv: table index
 *   [14] page_size = 1 + v % 17    [15] spare pages v % 8, spare cache rows (v / 8) % 4
 *   [16] num_splits (int8)         [17] pack_gqa v % 3 - 1 (>= 250: v)
 *   [18] window_left, [19] window_right (int8)   [20] chunk 1 + v   [21] softcap v / 8 + 0.5
 *   [22] sm_margin v % 2 (255: -1, 254: 1000)    [23] rotary_dim 16 (1 + v % 16), clipped to d
 *   [24] s_ro slack (int8)   [25] softmax_scale v / 32 (255: inf)   [26..29] data seed
 *   then 4 bytes per sequence: q rows short by v, keys short by v, new keys short by v, leftpad v
 *   then perturbation records [tensor or scalar][kind][a][b] (see perturb()).
 * combine / merge_state:
 *   [1] flags: 1 4-D (varlen) partials, 2 no lse, 4 special lse values, 8 padded, 16 negative
 *       strides, 32 out aliases out_a (merge), 64 lse aliases lse_b (merge)
 *   [2] S = v % 6 (255: 257)  [3] b  [4] s  [5] h  [6] dv = v % 40  [7] out dtype  [8..11] seed
 */
#include "core/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHECK(cond)                                                                                                \
    do {                                                                                                           \
        if (!(cond)) {                                                                                             \
            fprintf(stderr, "fuzz_fwd: %s:%d: check failed: %s (last error: %s)\n", __FILE__, __LINE__, #cond,    \
                    fa3c_last_error());                                                                            \
            __builtin_trap();                                                                                      \
        }                                                                                                          \
    } while (0)

/* The harness's own per-element loops need no coverage feedback (they would dominate the run time). */
#if defined(__clang__)
#define NO_COV __attribute__((no_sanitize("coverage")))
#else
#define NO_COV
#endif

#define CAP_BYTES   (1 << 20) /* largest buffer a tensor may need; beyond, its perturbation is undone */
#define MAX_BUFS    40
#define PAGE        4096
#define CANARY(i)   ((uint8_t)(0xA5 ^ (i) * 7))

/* ----------------------------------------------------------------------------------------- */
/* Input reader and a small RNG for tensor contents */

typedef struct reader { const uint8_t *p; size_t n, at; } reader;
static uint8_t rd(reader *r) { return r->at < r->n ? r->p[r->at++] : 0; }
static int8_t  rd_s8(reader *r) { return (int8_t)rd(r); }

typedef struct rng { uint64_t s; } rng;
NO_COV static uint64_t rng_u64(rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
NO_COV static float rng_unit(rng *r) { return (float)(rng_u64(r) >> 40) * 0x1.0p-24f * 2.0f - 1.0f; } /* [-1, 1) */

/* ----------------------------------------------------------------------------------------- */
/* Guarded buffers */

typedef struct gbuf {
    uint8_t *map;     /* PROT_NONE page | data pages | PROT_NONE page */
    size_t   map_len;
    uint8_t *data;    /* bytes, ending at the second guard page */
    size_t   bytes;
    uint8_t *snap;    /* copy of [map + PAGE, data + bytes) */
    uint8_t *mask;    /* output buffers: 1 where an element of the view lies */
    int      role;    /* ROLE_* */
} gbuf;

enum { ROLE_INPUT = 0, ROLE_OUTPUT = 1, ROLE_CACHE = 2 };

typedef struct arena { gbuf b[MAX_BUFS]; int n; } arena;

static uint8_t *page_start(const gbuf *g) { return g->map + PAGE; }

/* Freed mappings kept for reuse (guard pages stay in place): mmap, mprotect and munmap per buffer
 * would otherwise dominate the time of a run. */
#define POOL 256
static struct { uint8_t *map; size_t len; } pool[POOL];
static int pool_n;

static uint8_t *map_get(size_t len) {
    for (int i = pool_n - 1; i >= 0; i--)
        if (pool[i].len == len) {
            uint8_t *m = pool[i].map;
            pool[i] = pool[--pool_n];
            return m;
        }
    uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED);
    CHECK(mprotect(m, PAGE, PROT_NONE) == 0);
    CHECK(mprotect(m + len - PAGE, PAGE, PROT_NONE) == 0);
    return m;
}

static void map_put(uint8_t *m, size_t len) {
    if (pool_n < POOL && len <= 8 * PAGE) {
        pool[pool_n].map = m;
        pool[pool_n++].len = len;
    } else {
        munmap(m, len);
    }
}

NO_COV static gbuf *gb_alloc(arena *a, size_t bytes, int role) {
    CHECK(a->n < MAX_BUFS);
    gbuf *g = &a->b[a->n++];
    memset(g, 0, sizeof *g);
    size_t body = (bytes + PAGE - 1) / PAGE * PAGE;
    if (body == 0) body = PAGE;
    g->map_len = body + 2 * PAGE;
    g->map = map_get(g->map_len);
    g->bytes = bytes;
    g->data = g->map + PAGE + body - bytes;
    g->role = role;
    for (uint8_t *c = page_start(g); c < g->data; c++) *c = CANARY((size_t)(c - g->map));
    return g;
}

static void arena_free(arena *a) {
    for (int i = 0; i < a->n; i++) {
        map_put(a->b[i].map, a->b[i].map_len);
        free(a->b[i].snap);
        free(a->b[i].mask);
    }
    a->n = 0;
}

static size_t region(const gbuf *g) { return (size_t)(g->data + g->bytes - page_start(g)); }

NO_COV static void arena_snapshot(arena *a) {
    for (int i = 0; i < a->n; i++) {
        gbuf *g = &a->b[i];
        free(g->snap);
        g->snap = malloc(region(g) ? region(g) : 1);
        CHECK(g->snap != NULL);
        memcpy(g->snap, page_start(g), region(g));
    }
}

/* Canaries intact; nothing changed when !ok; otherwise inputs (and caches unless appending)
 * unchanged and output bytes changed only where the view has elements. */
NO_COV static void arena_verify(const arena *a, bool ok, bool append) {
    for (int i = 0; i < a->n; i++) {
        const gbuf *g = &a->b[i];
        size_t pre = (size_t)(g->data - page_start(g));
        CHECK(memcmp(g->snap, page_start(g), pre) == 0);
        bool may_write = ok && (g->role == ROLE_OUTPUT || (g->role == ROLE_CACHE && append));
        if (!may_write || !g->mask) { /* no mask: a buffer no view of the call covers */
            CHECK(memcmp(g->snap + pre, g->data, g->bytes) == 0);
            continue;
        }
        for (size_t j = 0; j < g->bytes; j++)
            if (!g->mask[j]) CHECK(g->snap[pre + j] == g->data[j]);
    }
}

/* ----------------------------------------------------------------------------------------- */
/* Tensor descriptions: built nominal, perturbed, then materialised into guarded buffers */

enum {
    T_Q, T_K, T_V, T_KN, T_VN, T_QV, T_OUT, T_LSE, T_OACC, T_LACC, T_CUQ, T_CUK, T_CUN, T_SQ, T_SK, T_PT,
    T_KBI, T_LP, T_COS, T_SIN, T_SR, T_QD, T_KD, T_VD, T_META, T_SINKS, T_COUNT
};

static const size_t arg_offset[T_COUNT] = {
    offsetof(fa3c_fwd_args, q), offsetof(fa3c_fwd_args, k), offsetof(fa3c_fwd_args, v),
    offsetof(fa3c_fwd_args, k_new), offsetof(fa3c_fwd_args, v_new), offsetof(fa3c_fwd_args, qv),
    offsetof(fa3c_fwd_args, out), offsetof(fa3c_fwd_args, softmax_lse), offsetof(fa3c_fwd_args, out_accum),
    offsetof(fa3c_fwd_args, lse_accum), offsetof(fa3c_fwd_args, cu_seqlens_q), offsetof(fa3c_fwd_args, cu_seqlens_k),
    offsetof(fa3c_fwd_args, cu_seqlens_k_new), offsetof(fa3c_fwd_args, seqused_q),
    offsetof(fa3c_fwd_args, seqused_k), offsetof(fa3c_fwd_args, page_table), offsetof(fa3c_fwd_args, kv_batch_idx),
    offsetof(fa3c_fwd_args, leftpad_k), offsetof(fa3c_fwd_args, rotary_cos), offsetof(fa3c_fwd_args, rotary_sin),
    offsetof(fa3c_fwd_args, seqlens_rotary), offsetof(fa3c_fwd_args, q_descale),
    offsetof(fa3c_fwd_args, k_descale), offsetof(fa3c_fwd_args, v_descale),
    offsetof(fa3c_fwd_args, scheduler_metadata), offsetof(fa3c_fwd_args, sinks),
};

typedef struct tdesc {
    bool       present;
    fa3c_dtype dtype;
    int        ndim;
    int64_t    shape[FA3C_MAX_DIMS];
    int64_t    pad;            /* added to every non-last stride */
    int        swap;           /* > 0: dims swap-1 and swap stored transposed */
    int        neg;            /* > 0: dim neg-1 runs backwards */
    int64_t    stride_set[FA3C_MAX_DIMS];
    bool       has_stride_set[FA3C_MAX_DIMS];
    int        device;         /* 0 cpu, 1 cuda:0, 2 cpu with device_index 1 */
    bool       null_data;
    int        role;
    const int32_t *vals;       /* index tensors: row-major values of the nominal shape */
    int64_t    nominal[FA3C_MAX_DIMS];
    int        nominal_ndim;
} tdesc;

/* The rank clamped to what the arrays hold (a perturbed rank may be anything). */
static int nd_of(const tdesc *t) { return t->ndim < 0 ? 0 : t->ndim > FA3C_MAX_DIMS ? FA3C_MAX_DIMS : t->ndim; }

static size_t elem_size(fa3c_dtype dt) {
    size_t s = fa3c_dtype_size(dt);
    return s ? s : 4;
}

/* Strides of a description (elements). */
static void desc_strides(const tdesc *t, int64_t *st) {
    int nd = nd_of(t);
    int order[FA3C_MAX_DIMS];
    for (int i = 0; i < nd; i++) order[i] = i;
    if (t->swap > 0 && t->swap < nd - 1) { /* storage order with two non-last dims exchanged */
        order[t->swap - 1] = t->swap;
        order[t->swap] = t->swap - 1;
    }
    int64_t run = 1;
    for (int j = nd - 1; j >= 0; j--) {
        int d = order[j];
        st[d] = run + (j == nd - 1 ? 0 : t->pad);
        if (j == nd - 1) st[d] = 1;
        __int128 next = (__int128)st[d] * (t->shape[d] > 0 ? t->shape[d] : 1);
        run = next > (INT64_C(1) << 40) ? INT64_C(1) << 40 : next < -(INT64_C(1) << 40) ? -(INT64_C(1) << 40) : (int64_t)next;
    }
    if (t->neg > 0 && t->neg <= nd) st[t->neg - 1] = -st[t->neg - 1];
    for (int i = 0; i < nd; i++)
        if (t->has_stride_set[i]) st[i] = t->stride_set[i];
}

static int64_t desc_numel(const tdesc *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim && i < FA3C_MAX_DIMS; i++) {
        if (t->shape[i] < 0) return 0;
        n = t->shape[i] > INT32_MAX || n > INT32_MAX ? INT64_C(1) << 40 : n * t->shape[i];
    }
    return n;
}

static bool desc_empty(const tdesc *t) {
    for (int i = 0; i < nd_of(t); i++)
        if (t->shape[i] == 0) return true;
    return false;
}

/* Element offsets reached: [lo, hi]. false when the span in bytes exceeds int64 (or a size is
 * negative / the rank invalid): the library must reject such a tensor. */
static bool desc_span(const tdesc *t, const int64_t *st, int64_t *lo, int64_t *hi) {
    __int128 l = 0, h = 0;
    if (t->ndim < 1 || t->ndim > FA3C_MAX_DIMS) return false;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0 || t->shape[i] > INT32_MAX) return false;
        __int128 reach = (__int128)(t->shape[i] > 0 ? t->shape[i] - 1 : 0) * st[i];
        if (reach < 0) l += reach;
        else h += reach;
    }
    __int128 bytes = (h - l + 1) * (__int128)elem_size(t->dtype);
    if (bytes > INT64_MAX) return false;
    *lo = (int64_t)l;
    *hi = (int64_t)h;
    return true;
}

typedef struct built {
    tdesc         t[T_COUNT];
    fa3c_fwd_args args;
    gbuf         *buf[T_COUNT];  /* NULL for absent or data-less tensors */
    bool          must_reject;   /* a present tensor the library must refuse (rank, sizes, span > 2^63 bytes) */
    bool          bad[T_COUNT];  /* which ones */
    bool          overlapping_out; /* an output (or appended cache) view with aliased elements */
} built;

NO_COV static void store_elem(const tdesc *t, void *data, int64_t off, float x, int32_t iv) {
    if (t->dtype == FA3C_DTYPE_I32 || (t->vals && fa3c_dtype_size(t->dtype) == 4 && t->dtype != FA3C_DTYPE_F32))
        ((int32_t *)data)[off] = iv;
    else if (t->vals && t->dtype == FA3C_DTYPE_F32)
        ((float *)data)[off] = (float)iv;
    else if (fa3c_dtype_size(t->dtype) == 0)
        ((int32_t *)data)[off] = iv;
    else
        fa3c_store(data, t->dtype, off, t->vals ? (float)iv : x);
}

/* Materialises description i into a new guarded buffer of arena a and points args at it. */
NO_COV static void materialise(built *bt, arena *a, int i, rng *r) {
    tdesc *t = &bt->t[i];
    fa3c_tensor *dst = (fa3c_tensor *)((char *)&bt->args + arg_offset[i]);
    memset(dst, 0, sizeof *dst);
    bt->buf[i] = NULL;
    if (!t->present) return;
    int64_t st[FA3C_MAX_DIMS] = {0}, lo = 0, hi = 0;
    desc_strides(t, st);
    bool fits = desc_span(t, st, &lo, &hi);
    if (fits && !desc_empty(t) &&
        ((hi - lo + 1) * (int64_t)elem_size(t->dtype) > CAP_BYTES || desc_numel(t) > CAP_BYTES)) {
        /* Perturbations made a valid but huge tensor (nominal ones are small): undo them, the
         * buffer cannot be given. */
        memcpy(t->shape, t->nominal, sizeof t->shape);
        t->ndim = t->nominal_ndim;
        memset(t->has_stride_set, 0, sizeof t->has_stride_set);
        t->pad = t->pad > 64 ? 0 : t->pad;
        desc_strides(t, st);
        fits = desc_span(t, st, &lo, &hi);
    }
    dst->dtype = t->dtype;
    dst->ndim = t->ndim;
    dst->device_type = t->device == 1 ? FA3C_DEVICE_CUDA : FA3C_DEVICE_CPU;
    dst->device_index = t->device == 0 ? 0 : t->device == 1 ? 0 : 1;
    for (int d = 0; d < FA3C_MAX_DIMS && d < t->ndim && t->ndim <= FA3C_MAX_DIMS; d++) {
        dst->shape[d] = t->shape[d];
        dst->stride[d] = st[d];
    }
    bool empty = desc_empty(t);
    if (!fits) {
        bool bad_dims = t->ndim < 1 || t->ndim > FA3C_MAX_DIMS;
        for (int d = 0; d < nd_of(t); d++) bad_dims |= t->shape[d] < 0 || t->shape[d] > INT32_MAX;
        if ((bad_dims || !empty) && t->dtype != FA3C_DTYPE_NONE && !(i == T_CUN && !bt->t[T_KN].present))
            bt->must_reject = bt->bad[i] = true;
        gbuf *g = gb_alloc(a, 16, t->role); /* a real pointer the library must not use */
        dst->data = t->null_data ? NULL : g->data;
        return;
    }
    if (empty) {
        gbuf *g = gb_alloc(a, 0, t->role);
        dst->data = t->null_data ? NULL : g->data;
        return;
    }
    int64_t es = (int64_t)elem_size(t->dtype);
    int64_t n = hi - lo + 1;
    gbuf *g = gb_alloc(a, (size_t)(n * es), t->role);
    bt->buf[i] = g;
    uint8_t *base = g->data - lo * es;
    dst->data = t->null_data ? NULL : base;
    if ((t->role == ROLE_OUTPUT || t->role == ROLE_CACHE)) {
        g->mask = calloc(g->bytes, 1);
        CHECK(g->mask != NULL);
    }
    if (t->role == ROLE_OUTPUT) {
        memset(g->data, 0xCD, g->bytes); /* the "never written" fill */
    } else if (!t->vals) {
        for (int64_t e = 0; e < n; e++) store_elem(t, g->data, e, rng_unit(r), (int32_t)(rng_u64(r) % 7));
    }
    /* Every element of the view: index values, and the output mask. */
    int64_t idx[FA3C_MAX_DIMS] = {0};
    for (;;) {
        int64_t off = 0, flat = 0;
        bool in_nominal = t->ndim == t->nominal_ndim;
        for (int d = 0; d < t->ndim; d++) {
            off += idx[d] * st[d];
            if (in_nominal && idx[d] >= t->nominal[d]) in_nominal = false;
            if (in_nominal) flat = flat * t->nominal[d] + idx[d];
        }
        if (g->mask) {
            if (g->mask[(off - lo) * es]) bt->overlapping_out = true;
            for (int64_t b = 0; b < es; b++) g->mask[(off - lo) * es + b] = 1;
        }
        if (t->vals) store_elem(t, base, off, 0, in_nominal ? t->vals[flat] : 0);
        int d = t->ndim - 1;
        while (d >= 0 && ++idx[d] == t->shape[d]) idx[d--] = 0;
        if (d < 0) break;
    }
}

static void desc_set(tdesc *t, fa3c_dtype dt, int ndim, const int64_t *shape, int role) {
    memset(t, 0, sizeof *t);
    t->present = true;
    t->dtype = dt;
    t->ndim = ndim;
    t->nominal_ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = t->nominal[i] = shape[i];
    t->role = role;
}

static void desc_index(tdesc *t, const int32_t *vals, int64_t n) {
    desc_set(t, FA3C_DTYPE_I32, 1, &n, ROLE_INPUT);
    t->vals = vals;
}

/* ----------------------------------------------------------------------------------------- */
/* The forward's description */

#define MAXB 4
#define MAX_PAGES 512

typedef struct fwd_spec {
    uint8_t mode, feat, extra, opt;
    fa3c_dtype dtype;
    int64_t b, s_q, s_k, s_new, h, h_k, d, dv, page_size, spare_pages, spare_rows;
    int32_t num_splits, pack_gqa, sm_margin, check_inputs;
    int64_t wl, wr, chunk, rotary_dim, s_ro_slack;
    double  softcap, scale;
    uint64_t seed;
    uint8_t seq[MAXB][4];
    /* index data (row-major values) */
    int32_t cu_q[MAXB + 1], cu_k[MAXB + 1], cu_new[MAXB + 1], seqused_q[MAXB], seqused_k[MAXB];
    int32_t leftpad[MAXB], kbi[MAXB], seqlens_rot[MAXB], page_table[(MAXB + 3) * 64];
    int64_t total_q, total_k, total_new, b_k, max_pages, num_pages, s_ro, max_q, max_k;
} fwd_spec;

static const int64_t d_table[13] = {64, 32, 16, 128, 8, 256, 96, 192, 40, 24, 0, 7, 264};
static const int64_t dv_table[10] = {0, 512, 256, 128, 64, 32, 96, 8, 520, 48}; /* 0: dv = d */

static fa3c_dtype dtype_from(uint8_t v) {
    static const fa3c_dtype wrong[] = {FA3C_DTYPE_F32, FA3C_DTYPE_I32, (fa3c_dtype)99, (fa3c_dtype)-1};
    if (v % 16 < 3) return v % 16 == 0 ? FA3C_DTYPE_BF16 : v % 16 == 1 ? FA3C_DTYPE_F16 : FA3C_DTYPE_E4M3;
    if (v % 16 < 13) return (fa3c_dtype)(FA3C_DTYPE_BF16 - (v % 2)); /* more bf16 / f16 */
    return wrong[v % 4];
}

static void decode_fwd(reader *r, fwd_spec *s) {
    memset(s, 0, sizeof *s);
    s->mode = rd(r), s->feat = rd(r), s->extra = rd(r), s->opt = rd(r);
    s->dtype = dtype_from(rd(r));
    s->b = rd(r) % 5;
    uint8_t v = rd(r);
    s->s_q = v == 255 ? 0 : 1 + v % 9;
    v = rd(r);
    s->s_k = v == 255 ? 0 : 1 + v % 40;
    s->s_new = rd(r) % 5;
    v = rd(r);
    s->h_k = v == 255 ? 0 : 1 + v % 3;
    s->h = s->h_k * (1 + rd(r) % 4);
    s->d = d_table[rd(r) % 13];
    v = rd(r) % 10;
    s->dv = v == 0 ? s->d : dv_table[v];
    s->page_size = 1 + rd(r) % 17;
    v = rd(r);
    s->spare_pages = v % 8, s->spare_rows = (v / 8) % 4;
    s->num_splits = rd_s8(r);
    v = rd(r);
    s->pack_gqa = v >= 250 ? v : v % 3 - 1;
    s->wl = rd_s8(r), s->wr = rd_s8(r);
    s->chunk = 1 + rd(r);
    s->softcap = rd(r) / 8.0 + 0.5;
    v = rd(r);
    s->sm_margin = v == 255 ? -1 : v == 254 ? 1000 : v % 2;
    s->rotary_dim = 16 * (1 + rd(r) % 16);
    s->s_ro_slack = rd_s8(r);
    v = rd(r);
    s->scale = v == 255 ? INFINITY : v / 32.0;
    for (int i = 0; i < 4; i++) s->seed = s->seed << 8 | rd(r);
    for (int64_t i = 0; i < s->b; i++)
        for (int j = 0; j < 4; j++) s->seq[i][j] = rd(r);
    int c = s->opt & 3;
    s->check_inputs = c == 0 ? 1 : c == 1 ? 0 : -1;
}

/* Lengths and index data of the nominal call (valid unless a length byte says otherwise). */
static void derive_index(fwd_spec *s) {
    bool paged = s->mode & 4, append = s->mode & 8, varlen_new = append && (s->extra & 4);
    s->total_q = s->total_k = s->total_new = 0;
    s->cu_q[0] = s->cu_k[0] = s->cu_new[0] = 0;
    s->max_q = s->max_k = 0;
    for (int64_t i = 0; i < s->b; i++) {
        int64_t ql = s->s_q - s->seq[i][0] % (s->s_q + 1);
        int64_t kl = s->s_k - s->seq[i][1] % (s->s_k + 1);
        int64_t nl = varlen_new ? s->s_new - s->seq[i][2] % (s->s_new + 1) : s->s_new;
        if (!append) nl = 0;
        s->cu_q[i + 1] = (int32_t)(s->cu_q[i] + ql);
        s->cu_k[i + 1] = (int32_t)(s->cu_k[i] + kl);
        s->cu_new[i + 1] = (int32_t)(s->cu_new[i] + nl);
        s->max_q = ql > s->max_q ? ql : s->max_q;
        s->max_k = kl > s->max_k ? kl : s->max_k;
        s->seqused_q[i] = (int32_t)(ql - (s->seq[i][0] & 1));
        if (s->seqused_q[i] < 0) s->seqused_q[i] = 0;
        /* cache lengths leave room for the appended keys */
        int64_t cap = (s->mode & 2) ? kl : s->s_k;
        int64_t used = cap - nl - s->seq[i][2] % 3;
        s->seqused_k[i] = (int32_t)(used < 0 ? 0 : used);
        int64_t lp = s->seq[i][3] % 4;
        s->leftpad[i] = (int32_t)(lp < s->seqused_k[i] ? lp : s->seqused_k[i]);
        s->seqlens_rot[i] = (int32_t)(s->seq[i][3] % 5);
    }
    s->total_q = s->cu_q[s->b];
    s->total_k = s->cu_k[s->b];
    s->total_new = s->cu_new[s->b];
    s->b_k = s->b + ((s->mode & 128) ? s->spare_rows : 0);
    for (int64_t i = 0; i < s->b; i++) s->kbi[i] = (int32_t)((i * 3 + s->spare_rows) % (s->b_k ? s->b_k : 1));
    if ((s->mode & 128) && s->b_k >= s->b) /* distinct rows when appending (each sequence owns its row) */
        for (int64_t i = 0; i < s->b; i++) s->kbi[i] = (int32_t)((s->b_k - 1 - i + s->spare_rows) % s->b_k);
    if (paged) {
        s->max_pages = (s->s_k + s->page_size - 1) / s->page_size;
        s->num_pages = s->b_k * s->max_pages + s->spare_pages;
        if (s->num_pages > MAX_PAGES || s->b_k * s->max_pages > (int64_t)(sizeof s->page_table / 4)) {
            s->page_size = s->s_k > 0 ? s->s_k : 1; /* one page per row keeps the table small */
            s->max_pages = 1;
            s->num_pages = s->b_k + s->spare_pages;
        }
        /* A permutation of the pages (the spare ones never referenced), from the seed. */
        rng r = {s->seed ^ 0x5151};
        int32_t perm[MAX_PAGES];
        for (int64_t i = 0; i < s->num_pages; i++) perm[i] = (int32_t)i;
        for (int64_t i = s->num_pages - 1; i > 0; i--) {
            int64_t j = (int64_t)(rng_u64(&r) % (uint64_t)(i + 1));
            int32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        for (int64_t i = 0; i < s->b_k * s->max_pages; i++) s->page_table[i] = perm[i];
    }
    int64_t s_k_static = paged ? s->max_pages * s->page_size : s->s_k;
    s->s_ro = s_k_static + s->s_new + s->s_q + 4 + s->s_ro_slack;
    if (s->s_ro < 0) s->s_ro = 0;
}

/* Nominal descriptions of every tensor of the call. */
static void describe_fwd(const fwd_spec *s, built *bt) {
    bool vq = s->mode & 1, vk = (s->mode & 2) != 0, paged = s->mode & 4, append = s->mode & 8;
    fa3c_dtype dt = s->dtype, odt = dt == FA3C_DTYPE_E4M3 ? FA3C_DTYPE_BF16 : dt;
    tdesc *t = bt->t;
    memset(bt, 0, sizeof *bt);
    if (vq) {
        int64_t q[3] = {s->total_q, s->h, s->d}, o[3] = {s->total_q, s->h, s->dv}, l[2] = {s->h, s->total_q};
        desc_set(&t[T_Q], dt, 3, q, ROLE_INPUT);
        desc_set(&t[T_OUT], odt, 3, o, ROLE_OUTPUT);
        desc_set(&t[T_LSE], FA3C_DTYPE_F32, 2, l, ROLE_OUTPUT);
        if (s->feat & 32) desc_set(&t[T_QV], dt, 3, o, ROLE_INPUT);
        desc_index(&t[T_CUQ], s->cu_q, s->b + 1);
    } else {
        int64_t q[4] = {s->b, s->s_q, s->h, s->d}, o[4] = {s->b, s->s_q, s->h, s->dv}, l[3] = {s->b, s->h, s->s_q};
        desc_set(&t[T_Q], dt, 4, q, ROLE_INPUT);
        desc_set(&t[T_OUT], odt, 4, o, ROLE_OUTPUT);
        desc_set(&t[T_LSE], FA3C_DTYPE_F32, 3, l, ROLE_OUTPUT);
        if (s->feat & 32) desc_set(&t[T_QV], dt, 4, o, ROLE_INPUT);
    }
    if (s->extra & 1) t[T_LSE].present = false;
    int cache_role = append ? ROLE_CACHE : ROLE_INPUT;
    if (paged) {
        int64_t k[4] = {s->num_pages, s->page_size, s->h_k, s->d}, v[4] = {s->num_pages, s->page_size, s->h_k, s->dv};
        int64_t pt[2] = {s->b_k, s->max_pages};
        desc_set(&t[T_K], dt, 4, k, cache_role);
        desc_set(&t[T_V], dt, 4, v, cache_role);
        desc_set(&t[T_PT], FA3C_DTYPE_I32, 2, pt, ROLE_INPUT);
        t[T_PT].vals = s->page_table;
    } else if (vk) {
        int64_t k[3] = {s->total_k, s->h_k, s->d}, v[3] = {s->total_k, s->h_k, s->dv};
        desc_set(&t[T_K], dt, 3, k, cache_role);
        desc_set(&t[T_V], dt, 3, v, cache_role);
        desc_index(&t[T_CUK], s->cu_k, s->b + 1);
    } else {
        int64_t k[4] = {s->b_k, s->s_k, s->h_k, s->d}, v[4] = {s->b_k, s->s_k, s->h_k, s->dv};
        desc_set(&t[T_K], dt, 4, k, cache_role);
        desc_set(&t[T_V], dt, 4, v, cache_role);
    }
    if (append) {
        if (s->extra & 4) {
            int64_t k[3] = {s->total_new, s->h_k, s->d}, v[3] = {s->total_new, s->h_k, s->dv};
            desc_set(&t[T_KN], dt, 3, k, ROLE_INPUT);
            desc_set(&t[T_VN], dt, 3, v, ROLE_INPUT);
            desc_index(&t[T_CUN], s->cu_new, s->b + 1);
        } else {
            int64_t k[4] = {s->b, s->s_new, s->h_k, s->d}, v[4] = {s->b, s->s_new, s->h_k, s->dv};
            desc_set(&t[T_KN], dt, 4, k, ROLE_INPUT);
            desc_set(&t[T_VN], dt, 4, v, ROLE_INPUT);
        }
    }
    if (s->mode & 16 || append) desc_index(&t[T_SK], s->seqused_k, s->b);
    if (s->mode & 32) desc_index(&t[T_SQ], s->seqused_q, s->b);
    if (s->mode & 64) desc_index(&t[T_LP], s->leftpad, s->b);
    if (s->mode & 128) desc_index(&t[T_KBI], s->kbi, s->b);
    if (s->feat & 64) {
        int64_t rd = s->rotary_dim <= s->d ? s->rotary_dim : s->d / 16 * 16;
        int64_t cs[2] = {s->s_ro, rd / 2};
        fa3c_dtype rdt = dt == FA3C_DTYPE_E4M3 ? FA3C_DTYPE_F32 : dt;
        desc_set(&t[T_COS], rdt, 2, cs, ROLE_INPUT);
        desc_set(&t[T_SIN], rdt, 2, cs, ROLE_INPUT);
        if (s->extra & 64) desc_index(&t[T_SR], s->seqlens_rot, s->b);
    }
    if (s->opt & 4) {
        int64_t ds[2] = {s->b, s->h_k};
        desc_set(&t[T_QD], FA3C_DTYPE_F32, 2, ds, ROLE_INPUT);
        desc_set(&t[T_KD], FA3C_DTYPE_F32, 2, ds, ROLE_INPUT);
        desc_set(&t[T_VD], FA3C_DTYPE_F32, 2, ds, ROLE_INPUT);
        t[T_KD].has_stride_set[0] = true; /* broadcast over the batch */
    }
    if (s->feat & 16) {
        static const fa3c_dtype sd[4] = {FA3C_DTYPE_F32, FA3C_DTYPE_BF16, FA3C_DTYPE_F16, FA3C_DTYPE_E4M3};
        desc_set(&t[T_SINKS], sd[(s->opt >> 4) & 3], 1, &s->h, ROLE_INPUT);
    }
    for (int i = 0; i < T_COUNT; i++) {
        if (!t[i].present || t[i].vals) continue;
        if (s->opt & 64) t[i].pad = 3 + (i % 5);
        if ((s->opt & 128) && t[i].ndim > 1) t[i].neg = 1 + i % (t[i].ndim - 1);
        if (i == T_LSE && (s->opt & 64)) t[i].swap = 1;
    }
    if (t[T_OUT].present && (s->opt & 128)) t[T_OUT].swap = 1;
}

static void scalar_args(const fwd_spec *s, fa3c_fwd_args *a) {
    fa3c_fwd_args_init(a);
    if (s->mode & 1) a->max_seqlen_q = s->max_q;
    if (s->mode & 2) a->max_seqlen_k = s->max_k;
    a->is_causal = s->feat & 1;
    if (s->feat & 2) a->window_size_left = s->wl, a->window_size_right = s->wr;
    if (s->feat & 4) a->attention_chunk = s->chunk;
    if (s->feat & 8) a->softcap = s->softcap;
    a->is_rotary_interleaved = (s->feat & 128) != 0;
    a->num_splits = s->num_splits;
    a->pack_gqa = s->pack_gqa;
    a->sm_margin = s->sm_margin;
    a->check_inputs = s->check_inputs;
    if (s->opt & 8) a->softmax_scale = s->scale;
}

/* One perturbation record: breaks a tensor description or a scalar. */
static void perturb(reader *r, built *bt, fa3c_fwd_args *sc) {
    uint8_t target = rd(r), kind = rd(r), a = rd(r), b = rd(r);
    static const int64_t huge[8] = {INT64_C(1) << 62, INT64_MAX, INT64_MIN, -(INT64_C(1) << 62),
                                    INT64_C(1) << 33, -1, INT32_MAX, (INT64_C(1) << 31) + 1};
    if (target >= 200) { /* scalars */
        switch (kind % 12) {
        case 0: sc->max_seqlen_q = huge[a % 8] % 64 + (int64_t)(int8_t)b; break;
        case 1: sc->max_seqlen_k = (int64_t)(int8_t)b; break;
        case 2: sc->num_splits = (int32_t)(a << 8 | b); break;
        case 3: sc->softcap = b & 1 ? NAN : -1.0; break;
        case 4: sc->softmax_scale = b & 1 ? INFINITY : -0.0; break;
        case 5: sc->attention_chunk = huge[a % 8]; break;
        case 6: sc->is_causal = (int32_t)(int8_t)b; break;
        case 7: sc->pack_gqa = (int32_t)(int8_t)b; break;
        case 8: sc->sm_margin = (int32_t)(int8_t)b; break;
        case 9: sc->window_size_left = huge[a % 8], sc->window_size_right = (int8_t)b; break;
        case 10: sc->check_inputs = (int32_t)(int8_t)b; break;
        default: sc->is_rotary_interleaved = (int8_t)b; break;
        }
        return;
    }
    tdesc *t = &bt->t[target % T_COUNT];
    int nd = nd_of(t), dim = nd > 0 ? a % nd : 0;
    switch (kind % 10) {
    case 0: /* a size off by a little */
        if (nd > 0) t->shape[dim] = (int64_t)((uint64_t)t->shape[dim] + (uint64_t)((int64_t)(b % 5) - 2));
        break;
    case 1: /* a huge or negative size */
        if (nd > 0) t->shape[dim] = b & 1 ? huge[b / 2 % 8] : -(int64_t)(b / 2);
        break;
    case 2: /* rank */
        if (b & 1 && nd == t->ndim && nd < FA3C_MAX_DIMS) t->shape[t->ndim++] = 1 + b / 64;
        else if (!(b & 1) && nd == t->ndim && nd > 0) t->ndim--;
        else t->ndim = (int)(int8_t)b;
        break;
    case 3: t->dtype = dtype_from(b); break;
    case 4: /* one stride set outright */
        if (nd > 0) t->stride_set[dim] = b & 1 ? huge[b / 2 % 8] : (int64_t)(int8_t)b / 2,
                         t->has_stride_set[dim] = true;
        break;
    case 5: t->device = 1 + b % 2; break;
    case 6: /* absent, or present without data */
        if (b & 1) t->present = !t->present;
        else t->null_data = true;
        if (t->present && t->ndim == 0) { /* an optional tensor turned on: a plausible (b,) int32 */
            t->dtype = FA3C_DTYPE_I32, t->ndim = t->nominal_ndim = 1, t->shape[0] = t->nominal[0] = 1 + b % 4;
        }
        break;
    case 7: /* index data: one entry replaced */
        if (t->vals && nd > 0) {
            static int32_t storage[T_COUNT][(MAXB + 3) * 64];
            int64_t n = 1;
            for (int d = 0; d < t->nominal_ndim; d++) n *= t->nominal[d];
            if (n > 0 && n <= (int64_t)(sizeof storage[0] / 4)) {
                int32_t *copy = storage[target % T_COUNT];
                if (t->vals != copy) memcpy(copy, t->vals, (size_t)n * 4);
                static const int32_t special[8] = {-1, 0, 1, INT32_MAX, INT32_MIN, 1000, -1000, 3};
                /* the nudge wraps (unsigned) instead of overflowing at INT32_MIN / INT32_MAX */
                copy[a % n] = b < 128 ? special[b % 8] : (int32_t)((uint32_t)copy[a % n] + (uint32_t)((int8_t)b % 8));
                t->vals = copy;
            }
        }
        break;
    case 8: t->pad = b & 1 ? (int64_t)(b / 2) : -(int64_t)(b / 2); break;
    default: t->swap = b % 5, t->neg = (b / 5) % 6; break;
    }
}

/* ----------------------------------------------------------------------------------------- */
/* Comparing the two backends */

static double ulp_of(fa3c_dtype dt, double x) {
    int e;
    frexp(fabs(x) > 1e-30 ? x : 1e-30, &e); /* |x| in [2^(e-1), 2^e) */
    int mant = dt == FA3C_DTYPE_BF16 ? 7 : dt == FA3C_DTYPE_F16 ? 10 : dt == FA3C_DTYPE_E4M3 ? 3 : 23;
    int min_e = dt == FA3C_DTYPE_F16 ? -14 : dt == FA3C_DTYPE_E4M3 ? -6 : -126;
    if (e - 1 < min_e) e = min_e + 1;
    return ldexp(1.0, e - 1 - mant);
}

/* Same classification (NaN / +inf / -inf / finite) and finite values within tol. */
static bool close_enough(float x, float ref, double tol) {
    if (isnan(ref) || isnan(x)) return isnan(ref) && isnan(x);
    if (isinf(ref) || isinf(x)) return x == ref;
    return fabs((double)x - ref) <= tol;
}

/* Every element of the view t (in arena a) against the same element in arena b. */
NO_COV static void compare_view(const fa3c_tensor *ta, const fa3c_tensor *tb, double abs_tol, int ulps) {
    if (!fa3c_present(ta) || !ta->data) return;
    int64_t idx[FA3C_MAX_DIMS] = {0};
    for (int d = 0; d < ta->ndim; d++)
        if (ta->shape[d] == 0) return;
    for (;;) {
        int64_t off = fa3c_offset(ta, idx);
        float x = fa3c_load(tb->data, tb->dtype, off), ref = fa3c_load(ta->data, ta->dtype, off);
        double tol = abs_tol + ulps * ulp_of(ta->dtype, ref);
        if (!close_enough(x, ref, tol)) {
            fprintf(stderr, "fuzz_fwd: cpu %.9g vs cpu-ref %.9g (tol %.3g) at element offset %lld\n", x, ref, tol,
                    (long long)off);
            CHECK(!"cpu and cpu-ref disagree");
        }
        int d = ta->ndim - 1;
        while (d >= 0 && ++idx[d] == ta->shape[d]) idx[d--] = 0;
        if (d < 0) break;
    }
}

static void check_status(fa3c_status st) {
    CHECK(st >= FA3C_OK && st <= FA3C_ERROR_INTERNAL);
    if (st != FA3C_OK) CHECK(fa3c_last_error()[0] != '\0');
    else CHECK(fa3c_last_error()[0] == '\0');
}

/* ----------------------------------------------------------------------------------------- */
/* Contexts (made once: cpu-ref and cpu, two threads each so the heuristics see the same SMs) */

static fa3c_context *ctx_ref, *ctx_cpu;

static void contexts_init(void) {
    if (ctx_ref) return;
    fa3c_context_options o;
    fa3c_context_options_init(&o);
    o.num_threads = 2;
    o.check_inputs = 0;
    o.backend = "cpu-ref";
    CHECK(fa3c_context_create(&o, &ctx_ref) == FA3C_OK);
    o.backend = "cpu";
    CHECK(fa3c_context_create(&o, &ctx_cpu) == FA3C_OK);
}

/* B := a byte-identical copy of A (same sizes, same data offsets), and args pointed into it. */
NO_COV static void clone_arena(const arena *a, arena *b) {
    for (int i = 0; i < a->n; i++) {
        const gbuf *g = &a->b[i];
        gbuf *h = gb_alloc(b, g->bytes, g->role);
        memcpy(h->data, g->data, g->bytes);
        if (g->mask) {
            h->mask = malloc(g->bytes);
            CHECK(h->mask != NULL);
            memcpy(h->mask, g->mask, g->bytes);
        }
    }
}

static void *translate(const arena *a, const arena *b, const void *p) {
    if (!p) return NULL;
    const uint8_t *q = p;
    for (int i = 0; i < a->n; i++) {
        const gbuf *g = &a->b[i];
        /* a data pointer may lie before its buffer (negative strides) but within the mapping */
        if (q >= g->map && q < g->map + g->map_len) return b->b[i].data + (q - g->data);
    }
    return (void *)p;
}

static void translate_args(const arena *a, const arena *b, const fa3c_fwd_args *in, fa3c_fwd_args *out) {
    *out = *in;
    for (int i = 0; i < T_COUNT; i++) {
        fa3c_tensor *t = (fa3c_tensor *)((char *)out + arg_offset[i]);
        t->data = translate(a, b, t->data);
    }
}

static void sched_args_of(const fwd_spec *s, const fa3c_fwd_args *a, fa3c_scheduler_args *sa) {
    fa3c_scheduler_args_init(sa);
    sa->batch_size = s->b;
    sa->max_seqlen_q = (s->mode & 1) ? s->max_q : s->s_q;
    sa->max_seqlen_k = (s->mode & 4) ? s->max_pages * s->page_size : (s->mode & 2) ? s->max_k : s->s_k;
    sa->num_heads_q = s->h;
    sa->num_heads_kv = s->h_k;
    sa->headdim = s->d;
    sa->headdim_v = s->dv;
    sa->qkv_dtype = s->dtype;
    sa->seqused_k = a->seqused_k;
    sa->cu_seqlens_q = a->cu_seqlens_q;
    sa->cu_seqlens_k = a->cu_seqlens_k;
    sa->cu_seqlens_k_new = a->cu_seqlens_k_new;
    sa->seqused_q = a->seqused_q;
    sa->leftpad_k = a->leftpad_k;
    sa->page_size = (s->mode & 4) ? s->page_size : 0;
    sa->max_seqlen_k_new = (s->mode & 8) ? ((s->extra & 4) ? s->total_new : s->s_new) : 0;
    sa->is_causal = a->is_causal;
    sa->window_size_left = a->window_size_left;
    sa->window_size_right = a->window_size_right;
    sa->attention_chunk = a->attention_chunk;
    sa->has_softcap = a->softcap > 0;
    sa->num_splits = a->num_splits;
    sa->pack_gqa = a->pack_gqa;
    sa->sm_margin = a->sm_margin;
}

/* Scheduler metadata for the call, in a guarded buffer of arena a (described as T_META). */
static void make_metadata(const fwd_spec *s, built *bt, arena *a, rng *r) {
    fa3c_scheduler_args sa;
    sched_args_of(s, &bt->args, &sa);
    int kind = (s->extra >> 4) & 3;
    if (kind == 1) sa.num_splits = sa.num_splits + 1;
    int64_t n = 0;
    fa3c_status st = fa3c_scheduler_metadata_size(ctx_ref, &sa, &n);
    check_status(st);
    if (st != FA3C_OK || n > CAP_BYTES / 4) n = FA3C_SCHED_HEADER + 8;
    if (kind == 3 && n > 1) n--;
    desc_set(&bt->t[T_META], FA3C_DTYPE_I32, 1, &n, ROLE_INPUT);
    materialise(bt, a, T_META, r);
    if (!bt->buf[T_META]) return;
    int32_t *w = (int32_t *)bt->buf[T_META]->data;
    for (int64_t i = 0; i < n; i++) w[i] = (int32_t)rng_u64(r);
    if (kind != 2 && st == FA3C_OK) { /* computed (kind 3: all but its last word) */
        int64_t full_n = kind == 3 ? n + 1 : n;
        int32_t *full = malloc((size_t)full_n * sizeof *full);
        CHECK(full != NULL);
        fa3c_tensor t = fa3c_tensor_contiguous(full, FA3C_DTYPE_I32, 1, &full_n);
        st = fa3c_get_scheduler_metadata(ctx_ref, &sa, &t);
        check_status(st);
        if (st == FA3C_OK) memcpy(w, full, (size_t)n * sizeof *w);
        free(full);
    }
}

static void fuzz_fwd(reader *r) {
    fwd_spec s;
    decode_fwd(r, &s);
    derive_index(&s);
    static built bt; /* large; one input at a time */
    describe_fwd(&s, &bt);
    fa3c_fwd_args sc;
    scalar_args(&s, &sc);
    for (int i = 0; i < 8 && r->at < r->n; i++) perturb(r, &bt, &sc);

    arena A = {0}, B = {0};
    rng data = {s.seed * 0x2545F4914F6CDD1Dull + 1};
    bt.args = sc;
    for (int i = 0; i < T_COUNT; i++)
        if (i != T_OACC && i != T_LACC && i != T_META) materialise(&bt, &A, i, &data);
    bool nonfinite = false;
    if ((s.extra & 128) && bt.buf[T_Q] && bt.buf[T_K]) {
        fa3c_tensor *t = (s.seed & 1) ? &bt.args.q : &bt.args.k;
        if (t->data && fa3c_dtype_size(t->dtype) > 0 && t->dtype != FA3C_DTYPE_I32) {
            fa3c_store(t->data, t->dtype, 0, (s.seed & 2) ? NAN : INFINITY);
            nonfinite = true;
        }
    }
    /* Split partials shaped for the resolved S (learnt from fa3c_fwd_query). */
    fa3c_fwd_info info;
    fa3c_status st_q = fa3c_fwd_query(ctx_cpu, &bt.args, &info);
    check_status(st_q);
    if ((s.extra & 2) && st_q == FA3C_OK && info.num_splits > 1) {
        int64_t S = info.num_splits;
        if (s.mode & 1) {
            int64_t o[4] = {S, s.h, s.total_q, s.dv}, l[3] = {S, s.h, s.total_q};
            desc_set(&bt.t[T_OACC], FA3C_DTYPE_F32, 4, o, ROLE_OUTPUT);
            desc_set(&bt.t[T_LACC], FA3C_DTYPE_F32, 3, l, ROLE_OUTPUT);
        } else {
            int64_t o[5] = {S, s.b, s.h, s.s_q, s.dv}, l[4] = {S, s.b, s.h, s.s_q};
            desc_set(&bt.t[T_OACC], FA3C_DTYPE_F32, 5, o, ROLE_OUTPUT);
            desc_set(&bt.t[T_LACC], FA3C_DTYPE_F32, 4, l, ROLE_OUTPUT);
        }
        if (s.opt & 64) bt.t[T_OACC].pad = 5, bt.t[T_LACC].swap = 2;
        materialise(&bt, &A, T_OACC, &data);
        materialise(&bt, &A, T_LACC, &data);
    }
    if (s.extra & 8) make_metadata(&s, &bt, &A, &data);

    clone_arena(&A, &B);
    fa3c_fwd_args args_b;
    translate_args(&A, &B, &bt.args, &args_b);

    /* Static validation: the same answer on both contexts and from both query and forward. */
    fa3c_status q_ref = fa3c_fwd_query(ctx_ref, &bt.args, &info);
    check_status(q_ref);
    fa3c_status q_cpu = fa3c_fwd_query(ctx_cpu, &args_b, &info);
    check_status(q_cpu);
    if (q_ref != FA3C_ERROR_UNSUPPORTED && q_cpu != FA3C_ERROR_UNSUPPORTED) CHECK(q_ref == q_cpu);
    if (bt.must_reject) CHECK(q_ref == FA3C_ERROR_INVALID_ARGUMENT);

    /* Index data the check would reject is only passed when the call asks for the check. */
    fa3c_fwd_args checked = bt.args;
    checked.check_inputs = 1;
    fa3c_status q_chk = fa3c_fwd_query(ctx_ref, &checked, &info);
    check_status(q_chk);
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "  fwd: %s%s%s (S=%d)\n", fa3c_status_string(q_ref), q_chk != q_ref ? ", index check: " : "",
                q_chk != q_ref ? fa3c_status_string(q_chk) : "", q_ref == FA3C_OK ? info.num_splits : 0);
    bool asks = bt.args.check_inputs == 1;
    bool run = asks || q_chk == FA3C_OK || q_ref != FA3C_OK;

    arena_snapshot(&A);
    arena_snapshot(&B);
    if (run) {
        bool append = bt.t[T_KN].present;
        fa3c_status st_ref = fa3c_fwd(ctx_ref, &bt.args);
        check_status(st_ref);
        arena_verify(&A, st_ref == FA3C_OK, append);
        fa3c_status st_cpu = fa3c_fwd(ctx_cpu, &args_b);
        check_status(st_cpu);
        arena_verify(&B, st_cpu == FA3C_OK, append);
        if (!fa3c_present(&bt.args.scheduler_metadata) || q_ref != FA3C_OK) CHECK(st_ref == q_ref);
        if (st_ref != FA3C_ERROR_UNSUPPORTED && st_cpu != FA3C_ERROR_UNSUPPORTED) CHECK(st_ref == st_cpu);
        if (bt.must_reject) CHECK(st_ref != FA3C_OK && st_cpu != FA3C_OK);
        if (st_ref == FA3C_OK && st_cpu == FA3C_OK && !nonfinite && !bt.overlapping_out) {
            fa3c_dtype odt = bt.args.out.dtype;
            double otol = odt == FA3C_DTYPE_F16 ? 4e-3 : 1.6e-2;
            compare_view(&bt.args.out, &args_b.out, otol, 2);
            compare_view(&bt.args.softmax_lse, &args_b.softmax_lse, 2e-4, 8);
            /* partials are fp32, but both backends round P to the input precision as FA3 does */
            compare_view(&bt.args.out_accum, &args_b.out_accum, otol, 1 << 16);
            compare_view(&bt.args.lse_accum, &args_b.lse_accum, 2e-4, 8);
            if (append) {
                compare_view(&bt.args.k, &args_b.k, 1e-6, 1);
                compare_view(&bt.args.v, &args_b.v, 1e-6, 1);
            }
        }
    }
    arena_free(&A);
    arena_free(&B);
}

/* ----------------------------------------------------------------------------------------- */
/* Scheduler metadata alone: fuzzed scheduler arguments and length data, both contexts */

static void fuzz_sched(reader *r) {
    fwd_spec s;
    decode_fwd(r, &s);
    derive_index(&s);
    static built bt;
    describe_fwd(&s, &bt);
    if (!bt.t[T_SK].present) desc_index(&bt.t[T_SK], s.seqused_k, s.b);
    fa3c_fwd_args sc;
    scalar_args(&s, &sc);
    for (int i = 0; i < 8 && r->at < r->n; i++) perturb(r, &bt, &sc);
    arena A = {0}, B = {0};
    rng data = {s.seed + 7};
    bt.args = sc;
    static const int len_tensors[] = {T_SK, T_CUQ, T_CUK, T_CUN, T_SQ, T_LP};
    for (size_t i = 0; i < sizeof len_tensors / sizeof len_tensors[0]; i++)
        materialise(&bt, &A, len_tensors[i], &data);
    fa3c_scheduler_args sa;
    sched_args_of(&s, &bt.args, &sa);
    if (s.spare_rows == 3) sa.batch_size = (int64_t)(int8_t)s.seq[0][0];
    if (s.spare_pages == 7) sa.page_size = -(int64_t)s.page_size;
    int64_t n = 0;
    fa3c_status st = fa3c_scheduler_metadata_size(ctx_ref, &sa, &n);
    check_status(st);
    if (st != FA3C_OK || n <= 0 || n > CAP_BYTES / 4) n = 1 + s.spare_pages;
    else if (s.spare_pages == 6) n--;
    desc_set(&bt.t[T_META], FA3C_DTYPE_I32, 1, &n, ROLE_OUTPUT);
    materialise(&bt, &A, T_META, &data);
    clone_arena(&A, &B);
    fa3c_scheduler_args sb = sa;
    fa3c_tensor *ta[] = {&sa.seqused_k, &sa.cu_seqlens_q, &sa.cu_seqlens_k, &sa.cu_seqlens_k_new, &sa.seqused_q,
                         &sa.leftpad_k};
    fa3c_tensor *tb[] = {&sb.seqused_k, &sb.cu_seqlens_q, &sb.cu_seqlens_k, &sb.cu_seqlens_k_new, &sb.seqused_q,
                         &sb.leftpad_k};
    for (int i = 0; i < 6; i++) tb[i]->data = translate(&A, &B, ta[i]->data);
    fa3c_tensor meta_b = bt.args.scheduler_metadata;
    meta_b.data = translate(&A, &B, meta_b.data);
    arena_snapshot(&A);
    arena_snapshot(&B);
    fa3c_status st_ref = fa3c_get_scheduler_metadata(ctx_ref, &sa, &bt.args.scheduler_metadata);
    check_status(st_ref);
    arena_verify(&A, st_ref == FA3C_OK, false);
    fa3c_status st_cpu = fa3c_get_scheduler_metadata(ctx_cpu, &sb, &meta_b);
    check_status(st_cpu);
    arena_verify(&B, st_cpu == FA3C_OK, false);
    CHECK(st_ref == st_cpu);
    if (st_ref == FA3C_OK && bt.buf[T_META])
        CHECK(memcmp(A.b[A.n - 1].data, B.b[B.n - 1].data, A.b[A.n - 1].bytes) == 0);
    arena_free(&A);
    arena_free(&B);
}

/* ----------------------------------------------------------------------------------------- */
/* combine and merge_state */

static void fill_lse(const built *bt, int slot, const fa3c_tensor *t, rng *r, bool special, bool *has_nan) {
    if (!bt->buf[slot] || !t->data || t->dtype != FA3C_DTYPE_F32) return;
    int64_t idx[FA3C_MAX_DIMS] = {0};
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] == 0) return;
    static const float sp[6] = {-INFINITY, INFINITY, NAN, 1e30f, -1e30f, 0.0f};
    for (;;) {
        float x = rng_unit(r) * 5.0f;
        if (special && rng_u64(r) % 3 == 0) x = sp[rng_u64(r) % 6];
        if (isnan(x)) *has_nan = true;
        ((float *)t->data)[fa3c_offset(t, idx)] = x;
        int d = t->ndim - 1;
        while (d >= 0 && ++idx[d] == t->shape[d]) idx[d--] = 0;
        if (d < 0) break;
    }
}

static void fuzz_combine(reader *r, bool merge) {
    uint8_t flags = rd(r), sv = rd(r);
    int64_t S = sv == 255 ? 257 : sv % 6, b = rd(r) % 3, sl = rd(r) % 4, h = rd(r) % 3, dv = rd(r) % 40;
    static const fa3c_dtype odts[4] = {FA3C_DTYPE_F32, FA3C_DTYPE_BF16, FA3C_DTYPE_F16, FA3C_DTYPE_E4M3};
    fa3c_dtype odt = odts[rd(r) % 4];
    uint64_t seed = 0;
    for (int i = 0; i < 4; i++) seed = seed << 8 | rd(r);
    bool varlen = flags & 1, no_lse = flags & 2, special = flags & 4;
    static built bt;
    memset(&bt, 0, sizeof bt);
    /* Slots reused: T_OACC/T_LACC the partials (merge: a), T_QV/T_SINKS b, T_OUT/T_LSE the result. */
    if (merge) {
        int64_t n = b * 3 + sl;
        int64_t o[3] = {n, h, dv}, l[2] = {n, h};
        desc_set(&bt.t[T_OACC], odt == FA3C_DTYPE_E4M3 ? FA3C_DTYPE_F32 : odt, 3, o, ROLE_INPUT);
        desc_set(&bt.t[T_LACC], FA3C_DTYPE_F32, 2, l, ROLE_INPUT);
        desc_set(&bt.t[T_QV], FA3C_DTYPE_BF16, 3, o, ROLE_INPUT);
        desc_set(&bt.t[T_SINKS], FA3C_DTYPE_F32, 2, l, ROLE_INPUT);
        desc_set(&bt.t[T_OUT], odt, 3, o, ROLE_OUTPUT);
        desc_set(&bt.t[T_LSE], FA3C_DTYPE_F32, 2, l, ROLE_OUTPUT);
    } else if (varlen) {
        int64_t o[4] = {S, b * sl, h, dv}, l[3] = {S, b * sl, h};
        desc_set(&bt.t[T_OACC], FA3C_DTYPE_F32, 4, o, ROLE_INPUT);
        desc_set(&bt.t[T_LACC], FA3C_DTYPE_F32, 3, l, ROLE_INPUT);
        desc_set(&bt.t[T_OUT], odt, 3, o + 1, ROLE_OUTPUT);
        desc_set(&bt.t[T_LSE], FA3C_DTYPE_F32, 2, l + 1, ROLE_OUTPUT);
        bt.t[T_LACC].swap = 2;
    } else {
        int64_t o[5] = {S, b, sl, h, dv}, l[4] = {S, b, sl, h};
        desc_set(&bt.t[T_OACC], FA3C_DTYPE_F32, 5, o, ROLE_INPUT);
        desc_set(&bt.t[T_LACC], FA3C_DTYPE_F32, 4, l, ROLE_INPUT);
        desc_set(&bt.t[T_OUT], odt, 4, o + 1, ROLE_OUTPUT);
        desc_set(&bt.t[T_LSE], FA3C_DTYPE_F32, 3, l + 1, ROLE_OUTPUT);
        bt.t[T_LACC].swap = 3;
    }
    if (no_lse) bt.t[T_LSE].present = false;
    for (int i = 0; i < T_COUNT; i++) {
        if (!bt.t[i].present) continue;
        if (flags & 8) bt.t[i].pad = 1 + i % 4;
        if ((flags & 16) && bt.t[i].ndim > 1) bt.t[i].neg = 1 + i % (bt.t[i].ndim - 1);
    }
    fa3c_fwd_args sc;
    fa3c_fwd_args_init(&sc);
    for (int i = 0; i < 8 && r->at < r->n; i++) perturb(r, &bt, &sc);
    arena A = {0}, B = {0};
    rng data = {seed + 3};
    for (int i = 0; i < T_COUNT; i++) materialise(&bt, &A, i, &data);
    fa3c_fwd_args *x = &bt.args;
    bool has_nan = false;
    fill_lse(&bt, T_LACC, &x->lse_accum, &data, special, &has_nan);
    if (merge) fill_lse(&bt, T_SINKS, &x->sinks, &data, special, &has_nan);
    bool alias_out = merge && (flags & 32) && bt.buf[T_OACC] && bt.t[T_OACC].dtype == bt.t[T_OUT].dtype;
    bool alias_lse = merge && (flags & 64) && !no_lse;
    if (alias_out) { /* out := out_a (same view), so out_a is written */
        bt.t[T_OACC].role = ROLE_OUTPUT;
        bt.buf[T_OACC]->role = ROLE_OUTPUT;
        bt.buf[T_OACC]->mask = calloc(bt.buf[T_OACC]->bytes, 1);
        CHECK(bt.buf[T_OACC]->mask != NULL);
        memset(bt.buf[T_OACC]->mask, 1, bt.buf[T_OACC]->bytes);
        x->out = x->out_accum;
    }
    if (alias_lse && bt.buf[T_SINKS]) {
        bt.buf[T_SINKS]->role = ROLE_OUTPUT;
        bt.buf[T_SINKS]->mask = calloc(bt.buf[T_SINKS]->bytes, 1);
        CHECK(bt.buf[T_SINKS]->mask != NULL);
        memset(bt.buf[T_SINKS]->mask, 1, bt.buf[T_SINKS]->bytes);
        x->softmax_lse = x->sinks;
    }
    clone_arena(&A, &B);
    fa3c_fwd_args y;
    translate_args(&A, &B, x, &y);
    arena_snapshot(&A);
    arena_snapshot(&B);
    fa3c_status st_ref, st_cpu;
    if (merge) {
        st_ref = fa3c_merge_state(ctx_ref, &x->out_accum, &x->lse_accum, &x->qv, &x->sinks, &x->out, &x->softmax_lse);
        check_status(st_ref);
        st_cpu = fa3c_merge_state(ctx_cpu, &y.out_accum, &y.lse_accum, &y.qv, &y.sinks, &y.out, &y.softmax_lse);
    } else {
        st_ref = fa3c_combine(ctx_ref, &x->out_accum, &x->lse_accum, &x->out, &x->softmax_lse);
        check_status(st_ref);
        st_cpu = fa3c_combine(ctx_cpu, &y.out_accum, &y.lse_accum, &y.out, &y.softmax_lse);
    }
    check_status(st_cpu);
    arena_verify(&A, st_ref == FA3C_OK, false);
    arena_verify(&B, st_cpu == FA3C_OK, false);
    CHECK(st_ref == st_cpu);
    bool refuse = bt.bad[T_OACC] || bt.bad[T_LACC] || (!alias_out && bt.bad[T_OUT]) || (!alias_lse && bt.bad[T_LSE]) ||
                  (merge && (bt.bad[T_QV] || bt.bad[T_SINKS]));
    if (refuse) CHECK(st_ref == FA3C_ERROR_INVALID_ARGUMENT);
    if (st_ref == FA3C_OK && !has_nan && !bt.overlapping_out) {
        double otol = odt == FA3C_DTYPE_F32 ? 1e-5 : 1e-3;
        compare_view(&x->out, &y.out, otol, 1);
        compare_view(&x->softmax_lse, &y.softmax_lse, 1e-5, 8);
    }
    arena_free(&A);
    arena_free(&B);
}

/* ----------------------------------------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    contexts_init();
    reader r = {data, size, 0};
    uint8_t op = rd(&r) % 10;
    if (op < 7) fuzz_fwd(&r);
    else if (op == 7) fuzz_combine(&r, false);
    else if (op == 8) fuzz_combine(&r, true);
    else fuzz_sched(&r);
    return 0;
}

#ifdef FA3C_FUZZ_STANDALONE
/* Replays inputs: every file named, and every file of every directory named. */
#include <dirent.h>
#include <sys/stat.h>

static int replay_file(const char *path) {
    if (getenv("FUZZ_VERBOSE")) fprintf(stderr, "fuzz_fwd: %s\n", path);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz_fwd: cannot open %s\n", path);
        return -1;
    }
    static uint8_t buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    uint8_t *copy = malloc(n ? n : 1); /* exact size, so reads past the end are caught */
    CHECK(copy != NULL);
    memcpy(copy, buf, n);
    LLVMFuzzerTestOneInput(copy, n);
    free(copy);
    return 0;
}

int main(int argc, char **argv) {
    int files = 0, bad = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "fuzz_fwd: no such file or directory: %s\n", argv[i]);
            bad++;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            bad += replay_file(argv[i]) != 0;
            files++;
            continue;
        }
        DIR *dir = opendir(argv[i]);
        struct dirent *e;
        while (dir && (e = readdir(dir)) != NULL) {
            if (e->d_name[0] == '.') continue;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
            bad += replay_file(path) != 0;
            files++;
        }
        if (dir) closedir(dir);
    }
    fa3c_context_destroy(ctx_ref);
    fa3c_context_destroy(ctx_cpu);
    printf("fuzz_fwd: replayed %d inputs, %d unreadable\n", files, bad);
    return bad || files == 0 ? 1 : 0;
}
#endif
