/*
 * Scheduler metadata: FA3's get_scheduler_metadata, plus a signature so that metadata reused for
 * a call it was not computed for is rejected with the differing argument named (the SGLang FA3
 * backend review: a cache keyed by non-unique strings handed one call another's schedule).
 *
 * Layout, int32 (internal.h):
 *   [0, 32)  header: magic, layout version, total size, the signature fields of sig_fields[],
 *            a 64-bit FNV-1a hash of the length tensors' contents
 *   then, b_r = round_up(b, 4) each:
 *     num_splits_dynamic[b_r]  splits of sequence bi (1..num_splits)         by real batch index
 *     num_m_blocks[b_r]        m-blocks of sequence bi                        by real batch index
 *     varlen_batch_idx[b_r]    the order: virtual index -> batch index        if !is_local
 *     num_nheads_in_l2[b_r]    heads whose KV share L2 for sequence bi        if causal or local
 *   then the tile semaphore (0).
 * FA3 stores the first, second and fourth vectors by virtual (sorted) index in some versions;
 * fa3c keeps every per-sequence vector by real batch index and the sort as an explicit order, so
 * the CPU backends read num_splits_dynamic[bi] without inverting the permutation.
 *
 * Shape legend as in include/fa3c.h (b, s_q, s_k, s_new, h, h_k, d, dv, S).
 */
#include "core/validate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCHED_MAGIC 0x4D334146 /* "FA3M" little-endian */
#define SCHED_LAYOUT_VERSION 1
/* FA3's prepare kernel runs one CTA of 32 warps x 31 sequences; beyond one CTA it does not split
 * dynamically, and each CTA sorts its own sequences. */
#define SCHED_BATCHES_PER_CTA 992
/* L2 budget FA3's head swizzle assumes (it notes an underestimate works better than 50 MB). */
#define SCHED_L2_BYTES (8 * 1024 * 1024)

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t round_up4(int64_t x) { return (x + 3) / 4 * 4; }

/* ----------------------------------------------------------------------------------------- */
/* Signature */

enum { /* header slots */
    F_MAGIC, F_VERSION, F_SIZE,
    F_BATCH, F_SEQLEN_Q, F_SEQLEN_K, F_HEADS_Q, F_HEADS_KV, F_HEADDIM, F_HEADDIM_V, F_DTYPE, F_PAGE_SIZE,
    F_APPEND, F_LENGTHS, F_SEQLEN_K_NEW,
    F_CAUSAL, F_WINDOW_LEFT, F_WINDOW_RIGHT, F_CHUNK, F_LOCAL, F_SOFTCAP,
    F_SPLITS_REQ, F_SPLITS, F_PACK_GQA, F_NUM_SM, F_DEVICE, F_BLOCK_M, F_BLOCK_N,
    F_HASH_LO, F_HASH_HI, F_RESERVED0, F_RESERVED1,
    F_COUNT
};
_Static_assert(F_COUNT == FA3C_SCHED_HEADER, "the header has FA3C_SCHED_HEADER slots");

typedef enum { K_INT, K_BOOL, K_DTYPE, K_PRESENT, K_DEVICE, K_OTHER } field_kind;

/* Names as FA3's Python arguments, so a mismatch message points at what the caller passed; the
 * hint says how the value was derived where it is not the argument itself. */
static const struct sched_field {
    const char *name, *hint;
    field_kind  kind;
} sig_fields[FA3C_SCHED_HEADER] = {
    [F_MAGIC] = {"magic", NULL, K_OTHER},
    [F_VERSION] = {"layout version", NULL, K_OTHER},
    [F_SIZE] = {"size", NULL, K_OTHER},
    [F_BATCH] = {"batch_size", NULL, K_INT},
    [F_SEQLEN_Q] = {"max_seqlen_q", NULL, K_INT},
    [F_SEQLEN_K] = {"max_seqlen_k", "k.shape[1], or max_pages * page_size when paged", K_INT},
    [F_HEADS_Q] = {"num_heads_q", NULL, K_INT},
    [F_HEADS_KV] = {"num_heads_kv", NULL, K_INT},
    [F_HEADDIM] = {"headdim", NULL, K_INT},
    [F_HEADDIM_V] = {"headdim_v", NULL, K_INT},
    [F_DTYPE] = {"qkv_dtype", NULL, K_DTYPE},
    [F_PAGE_SIZE] = {"page_size", "0: not paged", K_INT},
    [F_APPEND] = {"appending", "k_new given / max_seqlen_k_new > 0", K_BOOL},
    [F_LENGTHS] = {"length tensors", NULL, K_PRESENT},
    [F_SEQLEN_K_NEW] = {"max_seqlen_k_new", "k_new.shape[1] when appending without cu_seqlens_k_new", K_INT},
    [F_CAUSAL] = {"causal", "after FA3's window normalisation", K_BOOL},
    [F_WINDOW_LEFT] = {"window_size_left", "after FA3's window normalisation, -1: unbounded", K_INT},
    [F_WINDOW_RIGHT] = {"window_size_right", "after FA3's window normalisation, -1: unbounded", K_INT},
    [F_CHUNK] = {"attention_chunk", NULL, K_INT},
    [F_LOCAL] = {"local", "after FA3's window normalisation", K_BOOL},
    [F_SOFTCAP] = {"has_softcap", NULL, K_BOOL},
    [F_SPLITS_REQ] = {"num_splits", "requested, 0: heuristic", K_INT},
    [F_SPLITS] = {"num_splits", "resolved", K_INT},
    [F_PACK_GQA] = {"pack_gqa", "resolved", K_BOOL},
    [F_NUM_SM] = {"num_sm", "the context's SMs minus sm_margin", K_INT},
    [F_DEVICE] = {"device", NULL, K_DEVICE},
    [F_BLOCK_M] = {"block_m", "kernel tile", K_INT},
    [F_BLOCK_N] = {"block_n", "kernel tile", K_INT},
    [F_HASH_LO] = {"length hash", NULL, K_OTHER},
    [F_HASH_HI] = {"length hash", NULL, K_OTHER},
    [F_RESERVED0] = {"reserved", NULL, K_INT},
    [F_RESERVED1] = {"reserved", NULL, K_INT},
};

/* The length tensors a schedule is computed from, bit i of the F_LENGTHS mask. */
enum { L_SEQUSED_K, L_CU_Q, L_CU_K, L_SEQUSED_Q, L_LEFTPAD_K, L_CU_K_NEW, L_COUNT };
static const char *const length_names[L_COUNT] = {
    "seqused_k (cache_seqlens)", "cu_seqlens_q", "cu_seqlens_k", "seqused_q", "leftpad_k (cache_leftpad)",
    "cu_seqlens_k_new",
};

/* Tensor i of the list, or NULL when absent. cu_seqlens_k_new counts only when appending: FA3's
 * forward never reads it otherwise. */
static const fa3c_tensor *length_tensor(const fa3c_problem *p, int i) {
    const fa3c_fwd_args *a = p->args;
    const fa3c_tensor *t = NULL;
    switch (i) {
    case L_SEQUSED_K: t = &a->seqused_k; break;
    case L_CU_Q: t = &a->cu_seqlens_q; break;
    case L_CU_K: t = &a->cu_seqlens_k; break;
    case L_SEQUSED_Q: t = &a->seqused_q; break;
    case L_LEFTPAD_K: t = &a->leftpad_k; break;
    case L_CU_K_NEW: t = p->append ? &a->cu_seqlens_k_new : NULL; break;
    }
    return fa3c_present(t) ? t : NULL;
}

static uint64_t fnv1a_word(uint64_t hash, uint32_t w) {
    for (int i = 0; i < 4; i++) {
        hash ^= (w >> (8 * i)) & 0xffu;
        hash *= 0x100000001b3ULL;
    }
    return hash;
}

/* FNV-1a over (tensor tag, length, values) of every present length tensor, read on the host. */
static uint64_t lengths_hash(const fa3c_problem *p) {
    uint64_t hash = 0xcbf29ce484222325ULL;
    for (int i = 0; i < L_COUNT; i++) {
        const fa3c_tensor *t = length_tensor(p, i);
        if (!t) continue;
        int64_t n = fa3c_numel(t);
        hash = fnv1a_word(hash, (uint32_t)i);
        hash = fnv1a_word(hash, (uint32_t)n);
        const int32_t *v = (const int32_t *)t->data;
        for (int64_t j = 0; j < n; j++) hash = fnv1a_word(hash, (uint32_t)v[j * t->stride[0]]);
    }
    return hash;
}

/* The device the call runs on: q's for a forward, seqused_k's (required) for scheduler args. */
static int32_t call_device(const fa3c_problem *p) {
    const fa3c_tensor *t = fa3c_present(&p->args->q) ? &p->args->q : &p->args->seqused_k;
    return (int32_t)t->device_type * 65536 + t->device_index;
}

/* The header of p's schedule; the hash slots only when with_hash (it reads the length data). */
static void signature(const fa3c_problem *p, int32_t sig[FA3C_SCHED_HEADER], bool with_hash) {
    const fa3c_fwd_args *a = p->args;
    int32_t lengths = 0;
    for (int i = 0; i < L_COUNT; i++) lengths |= length_tensor(p, i) ? 1 << i : 0;
    memset(sig, 0, FA3C_SCHED_HEADER * sizeof(int32_t));
    sig[F_MAGIC] = SCHED_MAGIC;
    sig[F_VERSION] = SCHED_LAYOUT_VERSION;
    sig[F_SIZE] = (int32_t)fa3c_sched_size(p);
    sig[F_BATCH] = (int32_t)p->b;
    sig[F_SEQLEN_Q] = (int32_t)p->s_q;
    sig[F_SEQLEN_K] = (int32_t)p->s_k;
    sig[F_HEADS_Q] = (int32_t)p->h;
    sig[F_HEADS_KV] = (int32_t)p->h_k;
    sig[F_HEADDIM] = (int32_t)p->d;
    sig[F_HEADDIM_V] = (int32_t)p->dv;
    sig[F_DTYPE] = (int32_t)p->in_dtype;
    sig[F_PAGE_SIZE] = p->paged ? (int32_t)p->page_size : 0;
    sig[F_APPEND] = p->append;
    sig[F_LENGTHS] = lengths;
    sig[F_SEQLEN_K_NEW] = (int32_t)p->s_new;
    sig[F_CAUSAL] = p->is_causal;
    sig[F_WINDOW_LEFT] = (int32_t)p->window_left;
    sig[F_WINDOW_RIGHT] = (int32_t)p->window_right;
    sig[F_CHUNK] = (int32_t)p->chunk;
    sig[F_LOCAL] = p->is_local;
    sig[F_SOFTCAP] = p->softcap > 0.f;
    sig[F_SPLITS_REQ] = a->num_splits > 0 ? a->num_splits : 0; /* every value <= 0 means "heuristic" */
    sig[F_SPLITS] = p->num_splits;
    sig[F_PACK_GQA] = p->pack_gqa;
    sig[F_NUM_SM] = p->num_sm;
    sig[F_DEVICE] = call_device(p);
    sig[F_BLOCK_M] = p->block_m;
    sig[F_BLOCK_N] = p->block_n;
    if (with_hash) {
        uint64_t hash = lengths_hash(p);
        sig[F_HASH_LO] = (int32_t)(uint32_t)hash;
        sig[F_HASH_HI] = (int32_t)(uint32_t)(hash >> 32);
    }
}

/* "<value>" of a signature field, for messages. */
static const char *field_str(field_kind kind, int32_t v, char *buf, size_t n) {
    switch (kind) {
    case K_BOOL: return v ? "true" : "false";
    case K_DTYPE: return fa3c_dtype_name((fa3c_dtype)v);
    case K_DEVICE:
        snprintf(buf, n, "%s:%d", v / 65536 == FA3C_DEVICE_CUDA ? "cuda" : "cpu", (int)(v % 65536));
        return buf;
    default: snprintf(buf, n, "%d", (int)v); return buf;
    }
}

static fa3c_status field_mismatch(int f, int32_t computed, int32_t call) {
    const char *name = sig_fields[f].name;
    if (sig_fields[f].kind == K_PRESENT) { /* name the first tensor present on one side only */
        int i = 0;
        while (i < L_COUNT - 1 && ((computed ^ call) & (1 << i)) == 0) i++;
        const char *was = computed & (1 << i) ? "present" : "absent";
        const char *is = call & (1 << i) ? "present" : "absent";
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "scheduler_metadata: computed for %s=%s, this call has %s=%s",
                         length_names[i], was, length_names[i], is);
    }
    char b0[32], b1[32];
    const char *hint = sig_fields[f].hint;
    return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "scheduler_metadata: computed for %s=%s, this call has %s=%s%s%s%s",
                     name, field_str(sig_fields[f].kind, computed, b0, sizeof b0), name,
                     field_str(sig_fields[f].kind, call, b1, sizeof b1), hint ? " (" : "", hint ? hint : "",
                     hint ? ")" : "");
}

/* ----------------------------------------------------------------------------------------- */
/* Size, compute, verify */

/* Vectors are b_r = round_up(b, 4) long (FA3 keeps them 16-byte aligned). FA3 sorts sequences
 * unless local (a local tile's work does not grow with the sequence) and swizzles heads for L2
 * when causal or local. Hopper always needs the semaphore. */
int64_t fa3c_sched_size(const fa3c_problem *p) {
    int64_t vectors = 2 + (!p->is_local) + (p->is_causal || p->is_local);
    return FA3C_SCHED_HEADER + round_up4(p->b) * vectors + 1;
}

/* m- and n-blocks of sequence bi: packed q rows over kBlockM, attended keys over kBlockN. */
static void seq_blocks(const fa3c_problem *p, int64_t bi, int64_t *m, int64_t *n) {
    fa3c_seqlens sl;
    fa3c_seqlens_get(p, bi, &sl);
    int64_t rows = (sl.seqlen_q > 0 ? sl.seqlen_q : 0) * (p->pack_gqa && p->h_k > 0 ? p->h / p->h_k : 1);
    int64_t keys = sl.seqlen_k > 0 ? sl.seqlen_k : 0;
    *m = ceil_div(rows, p->block_m);
    *n = ceil_div(keys, p->block_n);
}

/* How many heads the tile scheduler walks together so that their K/V (n_blocks blocks of kBlockN
 * keys per head) stay in FA3's assumed L2: 16, 8, 4, 2 or 1 kv heads, times the q heads per kv
 * head when not packed (they share K/V), at most the heads scheduled. */
static int32_t nheads_in_l2(const fa3c_problem *p, int64_t n_blocks) {
    int64_t kvblock_bytes = (int64_t)p->block_n * (p->d + p->dv) * (p->is_fp8 ? 1 : 2);
    int64_t max_blocks = SCHED_L2_BYTES / kvblock_bytes;
    int64_t heads = 1;
    for (int64_t c = 16; c > 1; c /= 2)
        if (n_blocks * c <= max_blocks) { heads = c; break; }
    if (!p->pack_gqa) heads *= p->h_k > 0 ? p->h / p->h_k : 1;
    int64_t num_head = p->pack_gqa ? p->h_k : p->h;
    return (int32_t)(heads < num_head ? heads : num_head);
}

/*
 * FA3's prepare_varlen_num_blocks on the host.
 *   total = sum_b m_b * n_b; blocks_per_sm = ceil(total * 1.1 * heads / num_sm) (heads = h_k when
 *   packed, else h; 10% margin); splits_b = clamp(ceil(n_b / blocks_per_sm), 1, S): a sequence
 *   longer than one SM's fair share is split. FA3 does not split when b > 992 (more than one
 *   CTA) or S == 1. Its float arithmetic is kept so the counts match the GPU's. With no work at
 *   all (total 0) FA3 would divide by zero: every sequence gets 1 split.
 *   Order (when !is_local): descending n-blocks per work tile (ceil(n_b / splits_b)); causal
 *   sorts by the keys left after the diagonal, n*kBlockN - m*kBlockM. Sorting is stable and, as
 *   in FA3, within each group of 992 sequences.
 */
void fa3c_sched_compute(const fa3c_problem *p, int32_t *meta) {
    int64_t b = p->b, b_r = round_up4(b);
    bool sort = !p->is_local, swizzle = p->is_causal || p->is_local;
    int64_t size = fa3c_sched_size(p);
    memset(meta, 0, (size_t)size * sizeof(int32_t));
    signature(p, meta, true);
    int32_t *splits = meta + FA3C_SCHED_HEADER;
    int32_t *mblocks = splits + b_r;
    int32_t *order = sort ? mblocks + b_r : NULL;
    int32_t *l2 = swizzle ? mblocks + b_r * (sort ? 2 : 1) : NULL;

    int64_t total = 0;
    for (int64_t bi = 0; bi < b; bi++) { /* n-blocks parked in splits[] until the split is known */
        int64_t m, n;
        seq_blocks(p, bi, &m, &n);
        mblocks[bi] = (int32_t)m;
        splits[bi] = (int32_t)n;
        total += m * n;
    }
    bool dynamic = b <= SCHED_BATCHES_PER_CTA && p->num_splits > 1;
    int64_t heads = p->pack_gqa ? p->h_k : p->h;
    int64_t blocks_per_sm = (int64_t)ceilf((float)total * 1.1f * (float)heads / (float)p->num_sm);
    for (int64_t bi = 0; bi < b; bi++) {
        int64_t n = splits[bi], s = 1;
        if (dynamic && blocks_per_sm > 0) {
            s = ceil_div(n, blocks_per_sm);
            s = s < p->num_splits ? s : p->num_splits;
            s = s > 1 ? s : 1;
        }
        int64_t n_tile = ceil_div(n, s);
        splits[bi] = (int32_t)s;
        if (l2) l2[bi] = nheads_in_l2(p, n_tile > 1 ? n_tile : 1);
        if (order) order[bi] = (int32_t)n_tile; /* sort key input, replaced by the order below */
    }
    if (!order) return;
    int64_t key[SCHED_BATCHES_PER_CTA];
    int32_t idx[SCHED_BATCHES_PER_CTA];
    for (int64_t c0 = 0; c0 < b; c0 += SCHED_BATCHES_PER_CTA) {
        int64_t cn = b - c0 < SCHED_BATCHES_PER_CTA ? b - c0 : SCHED_BATCHES_PER_CTA;
        for (int64_t j = 0; j < cn; j++) { /* insertion sort, descending, stable */
            int64_t bi = c0 + j;
            int64_t k = p->is_causal ? (int64_t)order[bi] * p->block_n - (int64_t)mblocks[bi] * p->block_m : order[bi];
            int64_t at = j;
            while (at > 0 && key[at - 1] < k) {
                key[at] = key[at - 1];
                idx[at] = idx[at - 1];
                at--;
            }
            key[at] = k;
            idx[at] = (int32_t)bi;
        }
        for (int64_t j = 0; j < cn; j++) order[c0 + j] = idx[j];
    }
}

/*
 * Checks meta[0..n) against p: layout, every signature field (naming the first that differs),
 * the size, and with check_lengths the contents of the length tensors. The split counts are
 * also range-checked, since backends index partial buffers with them.
 */
fa3c_status fa3c_sched_verify(const fa3c_problem *p, const int32_t *meta, int64_t n, bool check_lengths) {
    int64_t need = fa3c_sched_size(p);
    if (n < FA3C_SCHED_HEADER || meta == NULL)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT,
                         "scheduler_metadata: has %lld elements, this call needs %lld (metadata_size)", (long long)n,
                         (long long)need);
    if (meta[F_MAGIC] != SCHED_MAGIC || meta[F_VERSION] != SCHED_LAYOUT_VERSION)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT,
                         "scheduler_metadata: not fa3c scheduler metadata of layout %d (magic 0x%08x, version %d); "
                         "compute it with fa3c_get_scheduler_metadata",
                         SCHED_LAYOUT_VERSION, (unsigned)meta[F_MAGIC], (int)meta[F_VERSION]);
    int32_t sig[FA3C_SCHED_HEADER];
    signature(p, sig, check_lengths);
    for (int f = F_BATCH; f < FA3C_SCHED_HEADER; f++) {
        if (f == F_HASH_LO || f == F_HASH_HI) continue;
        if (meta[f] != sig[f]) return field_mismatch(f, meta[f], sig[f]);
    }
    if (meta[F_SIZE] != n || n != need)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT,
                         "scheduler_metadata: has %lld elements, this call needs %lld (metadata_size)", (long long)n,
                         (long long)need);
    if (check_lengths && (meta[F_HASH_LO] != sig[F_HASH_LO] || meta[F_HASH_HI] != sig[F_HASH_HI]))
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT,
                         "scheduler_metadata: computed from other lengths (seqused_k / cu_seqlens_q / cu_seqlens_k / "
                         "seqused_q / leftpad_k / cu_seqlens_k_new contents changed)");
    const int32_t *splits = meta + FA3C_SCHED_HEADER;
    for (int64_t bi = 0; bi < p->b; bi++)
        if (splits[bi] < 1 || splits[bi] > p->num_splits)
            return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT,
                             "scheduler_metadata: num_splits_dynamic[%lld] = %d is outside [1, %d] (corrupted)",
                             (long long)bi, (int)splits[bi], (int)p->num_splits);
    return FA3C_OK;
}

fa3c_status fa3c_sched_plan_get(const fa3c_problem *p, int32_t *scratch, fa3c_sched_plan *plan) {
    plan->b = p->b;
    plan->num_splits_dynamic = NULL;
    if (!p->is_varlen) return FA3C_OK;
    const fa3c_tensor *t = &p->args->scheduler_metadata;
    if (fa3c_present(t)) { /* fa3c_problem_init checked it is a contiguous (n,) int32 tensor */
        const int32_t *meta = (const int32_t *)t->data;
        FA3C_TRY(fa3c_sched_verify(p, meta, t->shape[0], true)); /* CPU contexts: the data is on the host */
        plan->num_splits_dynamic = meta + FA3C_SCHED_HEADER;
        return FA3C_OK;
    }
    fa3c_sched_compute(p, scratch);
    plan->num_splits_dynamic = scratch + FA3C_SCHED_HEADER;
    return FA3C_OK;
}

/* ----------------------------------------------------------------------------------------- */
/* Scheduler arguments -> problem */

static fa3c_status check_range(const char *name, int64_t v, int64_t lo, int64_t hi) {
    if (v >= lo && v <= hi) return FA3C_OK;
    return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "%s: expected %lld <= %s <= %lld, got %lld", name, (long long)lo,
                     name, (long long)hi, (long long)v);
}

static fa3c_status check_optional_index(const fa3c_context *ctx, const char *name, const fa3c_tensor *t, int64_t n,
                                        const char *legend) {
    return fa3c_present(t) ? fa3c_validate_index(ctx, name, t, n, legend) : FA3C_OK;
}

/* Head dims as FA3's mha_fwd accepts them (fa3-semantics §2, §0.13, §0.18), as fa3c_problem_init. */
static fa3c_status check_headdims(fa3c_dtype dtype, int64_t d, int64_t dv) {
    int64_t align = dtype == FA3C_DTYPE_E4M3 ? 16 : 8;
    if (d < 1 || d > 256 || d % align)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT,
                         "headdim: expected a positive multiple of %lld <= 256 (%s), got %lld", (long long)align,
                         fa3c_dtype_name(dtype), (long long)d);
    if (dv < 1 || dv > 512 || dv % align)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT,
                         "headdim_v: expected a positive multiple of %lld <= 512 (%s), got %lld", (long long)align,
                         fa3c_dtype_name(dtype), (long long)dv);
    if (dv == d) return FA3C_OK;
    if (!((d > 128 && d <= 192 && dv > 96 && dv <= 128) || (d <= 64 && dv <= 512)))
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT,
                         "headdim_v: expected headdim_v == headdim, or headdim in (128, 192] with headdim_v in "
                         "(96, 128], or headdim <= 64 with headdim_v <= 512; got headdim = %lld, headdim_v = %lld",
                         (long long)d, (long long)dv);
    if (dv > 256 && dtype == FA3C_DTYPE_E4M3)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "headdim_v: > 256 needs qkv_dtype f16 or bf16, got %lld with %s",
                         (long long)dv, fa3c_dtype_name(dtype));
    /* FA3 accepts this combination in its checks but compiles no kernel for it. */
    if (dtype == FA3C_DTYPE_E4M3 && d <= 64)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT,
                         "headdim_v: with e4m3 and headdim <= 64 expected headdim_v == headdim = %lld, got %lld",
                         (long long)d, (long long)dv);
    return FA3C_OK;
}

/* Every size ends up in an int32 signature slot and in FA3's int parameters: <= INT32_MAX. */
static fa3c_status check_scheduler_args(const fa3c_context *ctx, const fa3c_scheduler_args *sa, int64_t dv) {
    int64_t b = sa->batch_size;
    FA3C_TRY(check_range("batch_size", b, 0, INT32_MAX - 1));
    FA3C_TRY(check_range("max_seqlen_q", sa->max_seqlen_q, 0, INT32_MAX));
    FA3C_TRY(check_range("max_seqlen_k", sa->max_seqlen_k, 0, INT32_MAX));
    FA3C_TRY(check_range("num_heads_kv", sa->num_heads_kv, 1, INT32_MAX));
    FA3C_TRY(check_range("num_heads_q", sa->num_heads_q, 1, INT32_MAX));
    if (sa->num_heads_q % sa->num_heads_kv)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT,
                         "num_heads_q: expected a multiple of num_heads_kv = %lld, got %lld",
                         (long long)sa->num_heads_kv, (long long)sa->num_heads_q);
    fa3c_dtype dt = sa->qkv_dtype;
    if (dt != FA3C_DTYPE_F16 && dt != FA3C_DTYPE_BF16 && dt != FA3C_DTYPE_E4M3)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "qkv_dtype: expected f16, bf16 or e4m3, got %s",
                         fa3c_dtype_name(dt));
    FA3C_TRY(check_headdims(dt, sa->headdim, dv));
    if (!fa3c_present(&sa->seqused_k))
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "seqused_k: required (cache_seqlens), got an absent tensor");
    FA3C_TRY(fa3c_validate_index(ctx, "seqused_k", &sa->seqused_k, b, "(b,)"));
    FA3C_TRY(check_optional_index(ctx, "cu_seqlens_q", &sa->cu_seqlens_q, b + 1, "(b + 1,)"));
    FA3C_TRY(check_optional_index(ctx, "cu_seqlens_k", &sa->cu_seqlens_k, b + 1, "(b + 1,)"));
    FA3C_TRY(check_optional_index(ctx, "cu_seqlens_k_new", &sa->cu_seqlens_k_new, b + 1, "(b + 1,)"));
    FA3C_TRY(check_optional_index(ctx, "seqused_q", &sa->seqused_q, b, "(b,)"));
    FA3C_TRY(check_optional_index(ctx, "leftpad_k", &sa->leftpad_k, b, "(b,)"));
    FA3C_TRY(check_range("page_size", sa->page_size, 0, INT32_MAX));
    FA3C_TRY(check_range("max_seqlen_k_new", sa->max_seqlen_k_new, 0, INT32_MAX));
    FA3C_TRY(check_range("attention_chunk", sa->attention_chunk, 0, INT32_MAX));
    /* The schedule is always dynamic-split (varlen), where FA3 packs the split count in 8 bits. */
    if (sa->num_splits > 255)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT,
                         "num_splits: expected <= 255 on the varlen (dynamic split) path, got %d", (int)sa->num_splits);
    FA3C_TRY(check_range("pack_gqa", sa->pack_gqa, -1, 1));
    FA3C_TRY(check_range("sm_margin", sa->sm_margin, 0, ctx->num_sm - 1));
    return FA3C_OK;
}

/*
 * The problem of the forward these scheduler arguments describe (kvcache or varlen, so always
 * is_varlen), with the same window normalisation and heuristics as fa3c_problem_init. Only the
 * fields the schedule depends on are meaningful; totals that only the tensors would give are
 * their batched bounds (b * s), scale is the default, and q/k/v stay absent.
 */
fa3c_status fa3c_problem_from_scheduler_args(const fa3c_context *ctx, const fa3c_scheduler_args *sa,
                                             fa3c_fwd_args *fwd, fa3c_problem *p) {
    int64_t dv = sa->headdim_v < 0 ? sa->headdim : sa->headdim_v;
    FA3C_TRY(check_scheduler_args(ctx, sa, dv));

    fa3c_fwd_args_init(fwd);
    fwd->seqused_k = sa->seqused_k;
    fwd->cu_seqlens_q = sa->cu_seqlens_q;
    fwd->cu_seqlens_k = sa->cu_seqlens_k;
    fwd->seqused_q = sa->seqused_q;
    fwd->leftpad_k = sa->leftpad_k;
    if (sa->max_seqlen_k_new > 0) fwd->cu_seqlens_k_new = sa->cu_seqlens_k_new;
    fwd->max_seqlen_q = sa->max_seqlen_q;
    fwd->max_seqlen_k = sa->max_seqlen_k;
    fwd->is_causal = sa->is_causal != 0;
    fwd->window_size_left = sa->window_size_left;
    fwd->window_size_right = sa->window_size_right;
    fwd->attention_chunk = sa->attention_chunk;
    fwd->softcap = sa->has_softcap ? 1.0 : 0.0;
    fwd->num_splits = sa->num_splits;
    fwd->pack_gqa = sa->pack_gqa;
    fwd->sm_margin = sa->sm_margin;

    memset(p, 0, sizeof *p);
    p->args = fwd;
    p->in_dtype = sa->qkv_dtype;
    p->out_dtype = sa->qkv_dtype == FA3C_DTYPE_E4M3 ? FA3C_DTYPE_BF16 : sa->qkv_dtype;
    p->is_fp8 = sa->qkv_dtype == FA3C_DTYPE_E4M3;
    p->b = sa->batch_size;
    p->s_q = sa->max_seqlen_q;
    p->h = sa->num_heads_q;
    p->h_k = sa->num_heads_kv;
    p->d = sa->headdim;
    p->dv = dv;
    p->s_k = sa->max_seqlen_k;
    p->b_k = p->b;
    p->paged = sa->page_size > 0;
    p->page_size = p->paged ? sa->page_size : 1;
    p->max_pages = p->paged ? ceil_div(p->s_k, p->page_size) : 0;
    p->append = sa->max_seqlen_k_new > 0;
    p->varlen_q = fa3c_present(&sa->cu_seqlens_q);
    p->varlen_k = fa3c_present(&sa->cu_seqlens_k);
    p->varlen_new = p->append && fa3c_present(&sa->cu_seqlens_k_new);
    p->s_new = p->append && !p->varlen_new ? sa->max_seqlen_k_new : 0;
    p->is_varlen = true;
    p->total_q = p->b * p->s_q;
    p->total_k = p->b * p->s_k;
    p->total_new = p->b * p->s_new;
    p->scale = 1.0f / sqrtf((float)p->d);
    p->softcap = sa->has_softcap ? 1.0f : 0.0f;
    p->check_inputs = ctx->check_inputs;

    p->is_causal = sa->is_causal != 0;
    p->window_left = sa->window_size_left;
    p->window_right = sa->window_size_right;
    p->chunk = sa->attention_chunk;
    fa3c_normalize_window(p->s_q, p->s_k, p->d, p->paged, p->chunk, &p->is_causal, &p->window_left,
                          &p->window_right, &p->is_local);

    return fa3c_problem_heuristics(ctx, p);
}

/* ----------------------------------------------------------------------------------------- */
/* Public API */

void fa3c_scheduler_args_init(fa3c_scheduler_args *args) {
    if (!args) return;
    memset(args, 0, sizeof *args); /* zeroed tensors are absent */
    args->qkv_dtype = FA3C_DTYPE_BF16;
    args->headdim_v = -1;
    args->window_size_left = -1;
    args->window_size_right = -1;
    args->pack_gqa = -1;
}

fa3c_status fa3c_scheduler_metadata_size(fa3c_context *ctx, const fa3c_scheduler_args *args, int64_t *size) {
    fa3c_clear_error();
    if (!ctx || !args || !size)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "%s: NULL",
                         !ctx ? "ctx" : !args ? "args" : "size");
    fa3c_fwd_args fwd;
    fa3c_problem p;
    FA3C_TRY(fa3c_problem_from_scheduler_args(ctx, args, &fwd, &p));
    *size = fa3c_sched_size(&p);
    return FA3C_OK;
}

/*
 * Device contexts: the length tensors (b or b + 1 int32 each) come to the host, the schedule is
 * computed there exactly as for CPU contexts, and the metadata goes back. This synchronises with
 * the context's stream, which is fine outside a forward (metadata is computed once per batch,
 * outside any CUDA graph); a device-side prepare kernel can replace it without changing results.
 */
static fa3c_status compute_via_host(fa3c_context *ctx, fa3c_problem *p, fa3c_fwd_args *fwd, const fa3c_tensor *out) {
    fa3c_tensor *lengths[] = {&fwd->seqused_k, &fwd->cu_seqlens_q, &fwd->cu_seqlens_k,
                              &fwd->cu_seqlens_k_new, &fwd->seqused_q, &fwd->leftpad_k};
    enum { N_LENGTHS = sizeof lengths / sizeof lengths[0] };
    void *host[N_LENGTHS] = {0};
    int64_t size = fa3c_sched_size(p);
    int32_t *meta = malloc((size_t)size * sizeof *meta);
    fa3c_status st = meta ? FA3C_OK : fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "scheduler metadata: out of memory");
    for (int i = 0; i < N_LENGTHS && st == FA3C_OK; i++) {
        fa3c_tensor *t = lengths[i];
        if (!fa3c_present(t)) continue;
        size_t bytes = (size_t)fa3c_numel(t) * sizeof(int32_t);
        host[i] = malloc(bytes ? bytes : 1);
        if (!host[i]) st = fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "scheduler metadata: out of memory");
        else st = fa3c_device_copy(ctx, host[i], t->data, bytes, FA3C_COPY_DEVICE_TO_HOST);
        t->data = host[i]; /* keeps its device fields: the signature records the call's device */
    }
    if (st == FA3C_OK) {
        fa3c_sched_compute(p, meta);
        st = fa3c_device_copy(ctx, out->data, meta, (size_t)size * sizeof *meta, FA3C_COPY_HOST_TO_DEVICE);
    }
    for (int i = 0; i < N_LENGTHS; i++) free(host[i]);
    free(meta);
    return st;
}

fa3c_status fa3c_get_scheduler_metadata(fa3c_context *ctx, const fa3c_scheduler_args *args, const fa3c_tensor *out) {
    fa3c_clear_error();
    if (!ctx || !args || !out)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "%s: NULL",
                         !ctx ? "ctx" : !args ? "args" : "out");
    fa3c_fwd_args fwd;
    fa3c_problem p;
    FA3C_TRY(fa3c_problem_from_scheduler_args(ctx, args, &fwd, &p));
    FA3C_TRY(fa3c_validate_index(ctx, "out", out, fa3c_sched_size(&p), "(metadata_size,)"));
    if (ctx->device_type == FA3C_DEVICE_CPU) {
        fa3c_sched_compute(&p, (int32_t *)out->data);
        return FA3C_OK;
    }
    return compute_via_host(ctx, &p, &fwd, out);
}
