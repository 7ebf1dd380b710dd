// The cuda backend: context (device, properties, workspace), device memory, kernel selection and
// the forward's order of launches on the context's stream:
//   nothing to do (total_q == 0 or h_k == 0)      -> no launch
//   no keys at all (total_k + total_new == 0)     -> fill out 0, lse +inf
//   otherwise: append (k_new) -> split counts (varlen with S > 1) -> attention -> combine (S > 1)
// Shape legend as in include/fa3c.h (b, s_q, s_k, s_new, h, h_k, d, dv, S).
#include "cuda/cuda_internal.cuh"

#include <stdlib.h>
#include <string.h>

fa3c_status cuda_fail(cudaError_t err, const char *what) {
    fa3c_status st = err == cudaErrorMemoryAllocation ? FA3C_ERROR_OUT_OF_MEMORY : FA3C_ERROR_DEVICE;
    return fa3c_fail(st, "cuda: %s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
}

#define CUDA_TRY(call, what)                                                                                       \
    do {                                                                                                           \
        cudaError_t cuda_try_err_ = (call);                                                                        \
        if (cuda_try_err_ != cudaSuccess) return cuda_fail(cuda_try_err_, what);                                   \
    } while (0)

static cuda_state *state_of(const fa3c_context *ctx) { return (cuda_state *)ctx->backend_state; }
static cudaStream_t stream_of(const fa3c_context *ctx) { return (cudaStream_t)ctx->stream; }

// The calling thread may have used another device since the last call on this context.
static fa3c_status use_device(const fa3c_context *ctx) {
    CUDA_TRY(cudaSetDevice(state_of(ctx)->device), "cudaSetDevice");
    return FA3C_OK;
}

// ---------------------------------------------------------------------------------------------
// Kernel table: one entry per (head-dim bucket, dv bucket, dtype, row shape).

static const cuda_attn_kernel *const kernel_groups[] = {
    fa3c_cuda_attn_d64, fa3c_cuda_attn_d96, fa3c_cuda_attn_d128, fa3c_cuda_attn_d192, fa3c_cuda_attn_d256,
};
static const int kernel_group_size[] = {
    CUDA_ATTN_KERNELS_PER_BUCKET, CUDA_ATTN_KERNELS_PER_BUCKET, CUDA_ATTN_KERNELS_PER_BUCKET,
    2 * CUDA_ATTN_KERNELS_PER_BUCKET, CUDA_ATTN_KERNELS_PER_BUCKET,
};
#define KERNEL_GROUPS ((int)(sizeof kernel_groups / sizeof kernel_groups[0]))

// Kernel id = group * 8 + index within the group.
static const cuda_attn_kernel *kernel_by_id(int32_t id) {
    int gi = id / 8, ki = id % 8;
    if (id < 0 || gi >= KERNEL_GROUPS || ki >= kernel_group_size[gi]) return NULL;
    return &kernel_groups[gi][ki];
}

static int32_t kernel_find(int hd, int dv, int bf16, int decode) {
    for (int gi = 0; gi < KERNEL_GROUPS; gi++)
        for (int ki = 0; ki < kernel_group_size[gi]; ki++) {
            const cuda_attn_kernel *k = &kernel_groups[gi][ki];
            if (k->hd == hd && k->dv == dv && k->bf16 == bf16 && k->decode == decode) return gi * 8 + ki;
        }
    return -1;
}

// ---------------------------------------------------------------------------------------------
// Backend entry points

static bool cuda_available(void) { return fa3c_cuda_device_count() > 0; }

static fa3c_status cuda_context_init(fa3c_context *ctx, const fa3c_context_options *opt) {
    int n = fa3c_cuda_device_count();
    if (opt->device_index >= n)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "device_index: expected < %d (the CUDA devices present), got %d",
                         n, (int)opt->device_index);
    CUDA_TRY(cudaSetDevice(opt->device_index), "cudaSetDevice");
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, opt->device_index), "cudaGetDeviceProperties");
    if (prop.major < 8)
        return fa3c_fail(FA3C_ERROR_UNSUPPORTED, "cuda: device %d (%s) has compute capability %d.%d; the cuda "
                         "backend needs 8.0 or newer", (int)opt->device_index, prop.name, prop.major, prop.minor);
    cuda_state *st = (cuda_state *)calloc(1, sizeof *st);
    if (!st) return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "cuda: context state: out of memory");
    st->device = opt->device_index;
    st->num_sm = prop.multiProcessorCount;
    st->cc_major = prop.major;
    st->cc_minor = prop.minor;
    st->smem_optin = prop.sharedMemPerBlockOptin;
    // The shared-memory opt-in is a per-device property of each kernel.
    for (int gi = 0; gi < KERNEL_GROUPS; gi++)
        for (int ki = 0; ki < kernel_group_size[gi]; ki++) {
            const cuda_attn_kernel *k = &kernel_groups[gi][ki];
            if (k->smem > st->smem_optin) continue;
            cudaError_t err = k->prepare();
            if (err != cudaSuccess) {
                free(st);
                return cuda_fail(err, k->name);
            }
        }
    ctx->backend_state = st;
    ctx->num_sm = st->num_sm;
    return FA3C_OK;
}

static void cuda_context_free(fa3c_context *ctx) {
    cuda_state *st = state_of(ctx);
    if (!st) return;
    if (st->ws && cudaSetDevice(st->device) == cudaSuccess) cudaFree(st->ws);
    free(st);
    ctx->backend_state = NULL;
}

static fa3c_status cuda_device_alloc(fa3c_context *ctx, size_t bytes, void **ptr) {
    FA3C_TRY(use_device(ctx));
    cudaError_t err = cudaMalloc(ptr, bytes ? bytes : 1);
    if (err != cudaSuccess) {
        *ptr = NULL;
        return cuda_fail(err, "device_alloc (cudaMalloc)");
    }
    return FA3C_OK;
}

static void cuda_device_free(fa3c_context *ctx, void *ptr) {
    if (use_device(ctx) == FA3C_OK) cudaFree(ptr);
}

static fa3c_status cuda_device_copy(fa3c_context *ctx, void *dst, const void *src, size_t bytes, fa3c_copy_kind kind) {
    FA3C_TRY(use_device(ctx));
    if (bytes == 0) return FA3C_OK;
    cudaMemcpyKind k = kind == FA3C_COPY_HOST_TO_DEVICE   ? cudaMemcpyHostToDevice
                       : kind == FA3C_COPY_DEVICE_TO_HOST ? cudaMemcpyDeviceToHost
                                                          : cudaMemcpyDeviceToDevice;
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, k, stream_of(ctx)), "device_copy (cudaMemcpyAsync)");
    CUDA_TRY(cudaStreamSynchronize(stream_of(ctx)), "device_copy (cudaStreamSynchronize)");
    return FA3C_OK;
}

static fa3c_status cuda_synchronize(fa3c_context *ctx) {
    FA3C_TRY(use_device(ctx));
    CUDA_TRY(cudaStreamSynchronize(stream_of(ctx)), "cudaStreamSynchronize");
    return FA3C_OK;
}

// The workspace grows to `bytes` (never shrinks). cudaFree waits for the device, so work still
// queued on the old workspace finishes first.
static fa3c_status workspace(fa3c_context *ctx, size_t bytes, void **ws) {
    cuda_state *st = state_of(ctx);
    if (bytes > st->ws_bytes) {
        if (st->ws) CUDA_TRY(cudaFree(st->ws), "workspace (cudaFree)");
        st->ws = NULL;
        st->ws_bytes = 0;
        CUDA_TRY(cudaMalloc(&st->ws, bytes), "workspace (cudaMalloc)");
        st->ws_bytes = bytes;
    }
    *ws = st->ws;
    return FA3C_OK;
}

// ---------------------------------------------------------------------------------------------
// Selection: the one answer to "supported?" and "which kernel".

static int64_t headdim_bucket(int64_t d) { return d <= 64 ? 64 : d <= 96 ? 96 : d <= 128 ? 128 : d <= 192 ? 192 : 256; }

// 16-byte rows: data pointer and every non-last stride (elements of 2 bytes) a multiple of 8.
static bool rows_aligned(const fa3c_tensor *t) {
    if (!fa3c_present(t) || fa3c_numel(t) == 0) return true;
    if ((uintptr_t)t->data % 16) return false;
    for (int i = 0; i < t->ndim - 1; i++)
        if (t->stride[i] % 8) return false;
    return true;
}

static fa3c_status cuda_select(const fa3c_context *ctx, const fa3c_problem *p, fa3c_kernel_choice *choice) {
    const cuda_state *st = state_of(ctx);
    const fa3c_fwd_args *a = p->args;
    if (p->is_fp8)
        return fa3c_fail(FA3C_ERROR_UNSUPPORTED, "cuda: e4m3 (fp8) inputs are not supported by the cuda backend yet");
    if (p->has_qv)
        return fa3c_fail(FA3C_ERROR_UNSUPPORTED, "cuda: qv (MLA absorbed attention) is not supported by the cuda "
                         "backend yet");
    if (p->total_q == 0 || p->h_k == 0 || p->no_keys) { // nothing to attend: at most a fill
        choice->kernel = -1;
        choice->name = p->no_keys && p->total_q > 0 && p->h_k > 0 ? "fill" : "none";
        return FA3C_OK;
    }
    int64_t hd = headdim_bucket(p->d), dvb;
    if (p->dv == p->d) dvb = hd;
    else if (p->d > 128 && p->d <= 192 && p->dv > 96 && p->dv <= 128) dvb = 128;
    else
        return fa3c_fail(FA3C_ERROR_UNSUPPORTED, "cuda: head dims d = %lld with dv = %lld are not supported by the "
                         "cuda backend yet (dv == d, and d in (128, 192] with dv in (96, 128], are)",
                         (long long)p->d, (long long)p->dv);
    const struct { const char *name; const fa3c_tensor *t; } rows[] = {
        {"q", &a->q}, {"k", &a->k}, {"v", &a->v}, {"out", &a->out}, {"k_new", &a->k_new}, {"v_new", &a->v_new},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        if (!rows_aligned(rows[i].t))
            return fa3c_fail(FA3C_ERROR_UNSUPPORTED, "cuda: %s needs 16-byte aligned rows (data pointer 16-byte "
                             "aligned, every stride but the last a multiple of 8 elements)", rows[i].name);
    // A sequence of at most 16 (packed) query rows runs the decode shape: its 4 warps split the keys.
    int64_t g = p->h / p->h_k, rows_per_seq = p->s_q * (p->pack_gqa ? g : 1);
    int32_t id = kernel_find((int)hd, (int)dvb, p->in_dtype == FA3C_DTYPE_BF16, rows_per_seq <= 16);
    const cuda_attn_kernel *k = kernel_by_id(id);
    if (!k) return fa3c_fail(FA3C_ERROR_INTERNAL, "cuda: no kernel for d %lld / dv %lld", (long long)hd, (long long)dvb);
    int64_t num_m = (rows_per_seq + k->block_m - 1) / k->block_m;
    int64_t blocks = p->b * (p->pack_gqa ? p->h_k : p->h) * p->num_splits * num_m;
    if (rows_per_seq > INT32_MAX - k->block_m || blocks > INT32_MAX)
        return fa3c_fail(FA3C_ERROR_UNSUPPORTED, "cuda: %lld query rows per sequence in %lld thread blocks exceed the "
                         "kernel's 32-bit grid", (long long)rows_per_seq, (long long)blocks);
    if (k->smem > st->smem_optin)
        return fa3c_fail(FA3C_ERROR_UNSUPPORTED, "cuda: kernel %s needs %zu bytes of shared memory, device %d allows %zu",
                         k->name, k->smem, st->device, st->smem_optin);
    choice->kernel = id;
    choice->name = k->name;
    return FA3C_OK;
}

// ---------------------------------------------------------------------------------------------
// Forward

static const int32_t *index_ptr(const fa3c_tensor *t) { return fa3c_present(t) ? (const int32_t *)t->data : NULL; }

static cuda_seq_params seq_params(const fa3c_problem *p) {
    const fa3c_fwd_args *a = p->args;
    cuda_seq_params s;
    memset(&s, 0, sizeof s);
    s.cu_q = index_ptr(&a->cu_seqlens_q);
    s.cu_k = index_ptr(&a->cu_seqlens_k);
    s.cu_new = p->append ? index_ptr(&a->cu_seqlens_k_new) : NULL;
    s.seqused_q = index_ptr(&a->seqused_q);
    s.seqused_k = index_ptr(&a->seqused_k);
    s.leftpad = index_ptr(&a->leftpad_k);
    s.kv_batch_idx = index_ptr(&a->kv_batch_idx);
    s.seqlens_rotary = index_ptr(&a->seqlens_rotary);
    s.s_q = (int32_t)p->s_q;
    s.s_k = (int32_t)p->s_k;
    s.s_new = (int32_t)p->s_new;
    s.varlen_q = p->varlen_q;
    s.varlen_k = p->varlen_k;
    s.is_varlen = p->is_varlen;
    s.append = p->append;
    s.varlen_new = p->varlen_new;
    return s;
}

// (batch, row, head) strides of a (b, s, h, x) or varlen (total, h, x) tensor; batch 0 when varlen.
static void token_strides(const fa3c_tensor *t, bool varlen, int64_t *sb, int64_t *sr, int64_t *sh) {
    if (varlen) {
        *sb = 0, *sr = t->stride[0], *sh = t->stride[1];
    } else {
        *sb = t->stride[0], *sr = t->stride[1], *sh = t->stride[2];
    }
}

// (batch or page, row, head) strides of a cache tensor: batched (b_k, s_k, h_k, x), varlen
// (total_k, h_k, x) (batch 0: rows already count cu_seqlens_k), paged (num_pages, page_size, h_k, x).
static void cache_strides(const fa3c_problem *p, const fa3c_tensor *t, int64_t *sb, int64_t *sr, int64_t *sh) {
    token_strides(t, p->varlen_k, sb, sr, sh);
}

static fa3c_status run_append(fa3c_context *ctx, const fa3c_problem *p, const cuda_seq_params *seq) {
    const fa3c_fwd_args *a = p->args;
    cuda_append_params ap;
    memset(&ap, 0, sizeof ap);
    ap.seq = *seq;
    ap.k_new = a->k_new.data;
    ap.v_new = a->v_new.data;
    ap.k = a->k.data;
    ap.v = a->v.data;
    token_strides(&a->k_new, p->varlen_new, &ap.kn_sb, &ap.kn_sr, &ap.kn_sh);
    token_strides(&a->v_new, p->varlen_new, &ap.vn_sb, &ap.vn_sr, &ap.vn_sh);
    cache_strides(p, &a->k, &ap.k_sb, &ap.k_sr, &ap.k_sh);
    cache_strides(p, &a->v, &ap.v_sb, &ap.v_sr, &ap.v_sh);
    ap.page_table = p->paged ? (const int32_t *)a->page_table.data : NULL;
    ap.pt_sb = p->paged ? a->page_table.stride[0] : 0;
    ap.page_size = (int32_t)p->page_size;
    ap.b = (int32_t)p->b;
    ap.h_k = (int32_t)p->h_k;
    ap.d = (int32_t)p->d;
    ap.dv = (int32_t)p->dv;
    ap.bf16 = p->in_dtype == FA3C_DTYPE_BF16;
    int64_t max_new = p->varlen_new ? p->total_new : p->s_new;
    ap.max_new = (int32_t)(max_new < INT32_MAX ? max_new : INT32_MAX);
    if (p->has_rotary) {
        ap.rot_cos = a->rotary_cos.data;
        ap.rot_sin = a->rotary_sin.data;
        ap.rotary_dim = (int32_t)p->rotary_dim;
        ap.rot_interleaved = p->rotary_interleaved;
    }
    CUDA_TRY(cuda_append_launch(&ap, stream_of(ctx)), "append kernel launch");
    return FA3C_OK;
}

// Split partials: out_accum / lse_accum when given, else the workspace laid out like them
// (contiguous (S, b, h, s_q, dv) / (S, h, total_q, dv) and (S, b, h, s_q) / (S, h, total_q)).
typedef struct partials {
    float  *out, *lse;
    int64_t o_ss, o_sb, o_sh, o_sr, l_ss, l_sb, l_sh, l_sr;
} partials;

static void partials_from_tensors(const fa3c_problem *p, partials *pt) {
    const fa3c_tensor *oa = &p->args->out_accum, *la = &p->args->lse_accum;
    pt->out = (float *)oa->data;
    pt->lse = (float *)la->data;
    if (p->varlen_q) {
        pt->o_ss = oa->stride[0], pt->o_sb = 0, pt->o_sh = oa->stride[1], pt->o_sr = oa->stride[2];
        pt->l_ss = la->stride[0], pt->l_sb = 0, pt->l_sh = la->stride[1], pt->l_sr = la->stride[2];
    } else {
        pt->o_ss = oa->stride[0], pt->o_sb = oa->stride[1], pt->o_sh = oa->stride[2], pt->o_sr = oa->stride[3];
        pt->l_ss = la->stride[0], pt->l_sb = la->stride[1], pt->l_sh = la->stride[2], pt->l_sr = la->stride[3];
    }
}

static void partials_in_workspace(const fa3c_problem *p, float *out, float *lse, partials *pt) {
    int64_t rows = p->varlen_q ? p->total_q : p->s_q;   // rows of one head
    int64_t batches = p->varlen_q ? 1 : p->b;
    pt->out = out;
    pt->lse = lse;
    pt->l_sr = 1;
    pt->l_sh = rows;
    pt->l_sb = p->varlen_q ? 0 : p->h * rows;
    pt->l_ss = batches * p->h * rows;
    pt->o_sr = p->dv;
    pt->o_sh = pt->l_sh * p->dv;
    pt->o_sb = pt->l_sb * p->dv;
    pt->o_ss = pt->l_ss * p->dv;
}

// Per-sequence split counts from args->scheduler_metadata (device memory): its header and split
// vector are copied to the host and checked against this call's signature. This copy is a host
// sync point (it breaks CUDA-graph capture); it goes once the signature is checked on the device.
static fa3c_status metadata_splits(fa3c_context *ctx, const fa3c_problem *p, const int32_t **splits) {
    const fa3c_tensor *t = &p->args->scheduler_metadata;
    int64_t n = t->shape[0], want = FA3C_SCHED_HEADER + p->b;
    int64_t copy = n < want ? (n < FA3C_SCHED_HEADER ? 0 : n) : want;
    int32_t *host = (int32_t *)malloc((size_t)(copy > 0 ? copy : 1) * sizeof(int32_t));
    if (!host) return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "cuda: scheduler_metadata header: out of memory");
    cudaError_t err = cudaSuccess;
    if (copy > 0) {
        err = cudaMemcpyAsync(host, t->data, (size_t)copy * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_of(ctx));
        if (err == cudaSuccess) err = cudaStreamSynchronize(stream_of(ctx));
    }
    fa3c_status st = err != cudaSuccess ? cuda_fail(err, "scheduler_metadata (copy to host)")
                                        : fa3c_sched_verify(p, copy > 0 ? host : NULL, n, false);
    free(host);
    *splits = (const int32_t *)t->data + FA3C_SCHED_HEADER;
    return st;
}

static fa3c_status cuda_fwd(fa3c_context *ctx, const fa3c_problem *p, const fa3c_sched_plan *plan,
                            const fa3c_kernel_choice *choice) {
    (void)plan; // device contexts get no host plan: split counts are computed below
    const fa3c_fwd_args *a = p->args;
    cudaStream_t stream = stream_of(ctx);
    FA3C_TRY(use_device(ctx));
    if (p->total_q == 0 || p->h_k == 0) return FA3C_OK;
    if (p->no_keys) {
        CUDA_TRY(cuda_fill_launch(&a->out, 0.0f, stream), "fill out");
        if (fa3c_present(&a->softmax_lse)) CUDA_TRY(cuda_fill_launch(&a->softmax_lse, INFINITY, stream), "fill lse");
        return FA3C_OK;
    }
    const cuda_attn_kernel *kern = kernel_by_id(choice->kernel);
    if (!kern) return fa3c_fail(FA3C_ERROR_INTERNAL, "cuda: kernel choice %d is not a cuda kernel", (int)choice->kernel);
    cuda_seq_params seq = seq_params(p);
    const int32_t S = p->num_splits;
    const bool dyn = p->is_varlen && S > 1, have_meta = fa3c_present(&a->scheduler_metadata);
    const bool user_accum = fa3c_present(&a->out_accum);

    const int32_t *splits = NULL;
    if (dyn && have_meta) FA3C_TRY(metadata_splits(ctx, p, &splits));

    // Workspace: [split counts (b, 16-byte padded)] [partial out] [partial lse].
    size_t off_splits = 0, off_out = 0, off_lse = 0, bytes = 0;
    if (dyn && !have_meta) {
        off_splits = bytes;
        bytes += ((size_t)p->b * sizeof(int32_t) + 15) / 16 * 16;
    }
    int64_t rows = p->varlen_q ? p->total_q : p->b * p->s_q;
    if (S > 1 && !user_accum) {
        off_out = bytes;
        bytes += (size_t)S * p->h * rows * p->dv * sizeof(float);
        off_lse = bytes;
        bytes += (size_t)S * p->h * rows * sizeof(float);
    }
    char *ws = NULL;
    if (bytes) FA3C_TRY(workspace(ctx, bytes, (void **)&ws));

    if (p->append) FA3C_TRY(run_append(ctx, p, &seq));

    int64_t g = p->h / p->h_k;
    if (dyn && !have_meta) {
        cuda_prepare_params pp;
        pp.seq = seq;
        pp.b = (int32_t)p->b;
        pp.rows_per_q = p->pack_gqa ? (int32_t)g : 1;
        pp.block_m = p->block_m;
        pp.block_n = p->block_n;
        pp.num_splits = S;
        pp.num_sm = p->num_sm;
        pp.heads = (int32_t)(p->pack_gqa ? p->h_k : p->h);
        pp.splits = (int32_t *)(ws + off_splits);
        CUDA_TRY(cuda_prepare_launch(&pp, stream), "prepare kernel launch");
        splits = pp.splits;
    }

    partials pt;
    memset(&pt, 0, sizeof pt);
    if (S > 1) {
        if (user_accum) partials_from_tensors(p, &pt);
        else partials_in_workspace(p, (float *)(ws + off_out), (float *)(ws + off_lse), &pt);
    }

    cuda_attn_params ap;
    memset(&ap, 0, sizeof ap);
    ap.seq = seq;
    ap.mask.causal = p->is_causal;
    ap.mask.local = p->is_local;
    ap.mask.wl = p->window_left;
    ap.mask.wr = p->window_right;
    ap.mask.chunk = p->chunk;
    ap.q = a->q.data;
    ap.k = a->k.data;
    ap.v = a->v.data;
    ap.out = a->out.data;
    ap.lse = fa3c_present(&a->softmax_lse) ? (float *)a->softmax_lse.data : NULL;
    token_strides(&a->q, p->varlen_q, &ap.q_sb, &ap.q_sr, &ap.q_sh);
    cache_strides(p, &a->k, &ap.k_sb, &ap.k_sr, &ap.k_sh);
    cache_strides(p, &a->v, &ap.v_sb, &ap.v_sr, &ap.v_sh);
    token_strides(&a->out, p->varlen_q, &ap.o_sb, &ap.o_sr, &ap.o_sh);
    if (ap.lse) { // (b, h, s_q) or (h, total_q)
        const fa3c_tensor *l = &a->softmax_lse;
        if (p->varlen_q) ap.l_sb = 0, ap.l_sh = l->stride[0], ap.l_sr = l->stride[1];
        else ap.l_sb = l->stride[0], ap.l_sh = l->stride[1], ap.l_sr = l->stride[2];
    }
    ap.oacc = pt.out;
    ap.lacc = pt.lse;
    ap.oa_ss = pt.o_ss, ap.oa_sb = pt.o_sb, ap.oa_sh = pt.o_sh, ap.oa_sr = pt.o_sr;
    ap.la_ss = pt.l_ss, ap.la_sb = pt.l_sb, ap.la_sh = pt.l_sh, ap.la_sr = pt.l_sr;
    ap.page_table = p->paged ? (const int32_t *)a->page_table.data : NULL;
    ap.pt_sb = p->paged ? a->page_table.stride[0] : 0;
    ap.page_size = (int32_t)p->page_size;
    ap.page_shift = -1;
    for (int sh = 0; sh < 31; sh++)
        if ((int64_t)1 << sh == p->page_size) ap.page_shift = sh;
    ap.b = (int32_t)p->b;
    ap.h = (int32_t)p->h;
    ap.h_k = (int32_t)p->h_k;
    ap.g = (int32_t)g;
    ap.d = (int32_t)p->d;
    ap.dv = (int32_t)p->dv;
    ap.pack_gqa = p->pack_gqa;
    ap.grid_heads = (int32_t)(p->pack_gqa ? p->h_k : p->h);
    ap.num_m_blocks = (int32_t)((p->s_q * (p->pack_gqa ? g : 1) + kern->block_m - 1) / kern->block_m);
    ap.scale_log2 = p->scale * 1.4426950408889634f;
    ap.softcap = p->softcap;
    ap.softcap_scale = p->softcap > 0.0f ? p->scale / p->softcap : 0.0f;
    if (p->has_sinks) {
        ap.sinks = a->sinks.data;
        ap.sinks_dtype = a->sinks.dtype;
    }
    if (p->has_rotary) {
        ap.rot_cos = a->rotary_cos.data;
        ap.rot_sin = a->rotary_sin.data;
        ap.rotary_dim = (int32_t)p->rotary_dim;
        ap.rot_interleaved = p->rotary_interleaved;
        ap.rot_per_row = p->is_causal || p->is_local;
    }
    ap.num_splits = S;
    ap.split_block_n = p->block_n;
    ap.splits_dyn = splits;
    if (ap.num_m_blocks > 0) CUDA_TRY(kern->launch(&ap, stream), kern->name);

    if (S > 1) {
        cuda_combine_params cp;
        memset(&cp, 0, sizeof cp);
        cp.op = pt.out;
        cp.lp = pt.lse;
        cp.out = a->out.data;
        cp.lse = ap.lse;
        cp.out_dtype = a->out.dtype;
        cp.op_ss = pt.o_ss, cp.op_sb = pt.o_sb, cp.op_sr = pt.o_sr, cp.op_sh = pt.o_sh;
        cp.lp_ss = pt.l_ss, cp.lp_sb = pt.l_sb, cp.lp_sr = pt.l_sr, cp.lp_sh = pt.l_sh;
        cp.o_sb = ap.o_sb, cp.o_sr = ap.o_sr, cp.o_sh = ap.o_sh;
        cp.l_sb = ap.l_sb, cp.l_sr = ap.l_sr, cp.l_sh = ap.l_sh;
        cp.S = S;
        cp.b = (int32_t)p->b;
        cp.s = (int32_t)p->s_q;
        cp.h = (int32_t)p->h;
        cp.dv = (int32_t)p->dv;
        cp.fwd = 1;
        cp.seq = seq;
        cp.splits_dyn = splits;
        CUDA_TRY(cuda_combine_launch(&cp, stream), "combine kernel launch");
    }
    return FA3C_OK;
}

// out_partial (S, b, s, h, dv) fp32, lse_partial (S, b, s, h) -> out (b, s, h, dv), lse (b, s, h).
static fa3c_status cuda_combine(fa3c_context *ctx, const fa3c_tensor *out_partial, const fa3c_tensor *lse_partial,
                                const fa3c_tensor *out, const fa3c_tensor *lse) {
    FA3C_TRY(use_device(ctx));
    cuda_combine_params cp;
    memset(&cp, 0, sizeof cp);
    const int64_t *po = out_partial->stride, *pl = lse_partial->stride;
    cp.op = (const float *)out_partial->data;
    cp.lp = (const float *)lse_partial->data;
    cp.out = out->data;
    cp.lse = lse ? (float *)lse->data : NULL;
    cp.out_dtype = out->dtype;
    cp.op_ss = po[0], cp.op_sb = po[1], cp.op_sr = po[2], cp.op_sh = po[3];
    cp.lp_ss = pl[0], cp.lp_sb = pl[1], cp.lp_sr = pl[2], cp.lp_sh = pl[3];
    cp.o_sb = out->stride[0], cp.o_sr = out->stride[1], cp.o_sh = out->stride[2];
    if (lse) cp.l_sb = lse->stride[0], cp.l_sr = lse->stride[1], cp.l_sh = lse->stride[2];
    cp.S = (int32_t)out_partial->shape[0];
    cp.b = (int32_t)out_partial->shape[1];
    cp.s = (int32_t)out_partial->shape[2];
    cp.h = (int32_t)out_partial->shape[3];
    cp.dv = (int32_t)out_partial->shape[4];
    if (cp.S == 0) { // no partials at all: every row gets out 0, lse -inf
        CUDA_TRY(cuda_fill_launch(out, 0.0f, stream_of(ctx)), "fill out");
        if (lse) CUDA_TRY(cuda_fill_launch(lse, -INFINITY, stream_of(ctx)), "fill lse");
        return FA3C_OK;
    }
    if ((int64_t)out_partial->shape[1] * out_partial->shape[2] * out_partial->shape[3] > (int64_t)INT32_MAX * 8)
        return fa3c_fail(FA3C_ERROR_UNSUPPORTED, "cuda: combine of more than 2^34 rows");
    CUDA_TRY(cuda_combine_launch(&cp, stream_of(ctx)), "combine kernel launch");
    return FA3C_OK;
}

// out_a, out_b, out (n, h, dv); lse_a, lse_b, lse (n, h).
static fa3c_status cuda_merge_state(fa3c_context *ctx, const fa3c_tensor *out_a, const fa3c_tensor *lse_a,
                                    const fa3c_tensor *out_b, const fa3c_tensor *lse_b, const fa3c_tensor *out,
                                    const fa3c_tensor *lse) {
    FA3C_TRY(use_device(ctx));
    cuda_merge_params mp;
    memset(&mp, 0, sizeof mp);
    mp.oa = out_a->data;
    mp.ob = out_b->data;
    mp.la = (const float *)lse_a->data;
    mp.lb = (const float *)lse_b->data;
    mp.out = out->data;
    mp.lse = lse ? (float *)lse->data : NULL;
    mp.oa_dtype = out_a->dtype;
    mp.ob_dtype = out_b->dtype;
    mp.out_dtype = out->dtype;
    mp.oa_sn = out_a->stride[0], mp.oa_sh = out_a->stride[1];
    mp.ob_sn = out_b->stride[0], mp.ob_sh = out_b->stride[1];
    mp.o_sn = out->stride[0], mp.o_sh = out->stride[1];
    mp.la_sn = lse_a->stride[0], mp.la_sh = lse_a->stride[1];
    mp.lb_sn = lse_b->stride[0], mp.lb_sh = lse_b->stride[1];
    if (lse) mp.l_sn = lse->stride[0], mp.l_sh = lse->stride[1];
    mp.n = (int32_t)out->shape[0];
    mp.h = (int32_t)out->shape[1];
    mp.dv = (int32_t)out->shape[2];
    CUDA_TRY(cuda_merge_launch(&mp, stream_of(ctx)), "merge_state kernel launch");
    return FA3C_OK;
}

extern "C" const fa3c_backend fa3c_backend_cuda = {
    "cuda",
    "NVIDIA GPUs (sm_80+): mma.sync tensor-core attention, paged KV, split-KV with combine",
    FA3C_DEVICE_CUDA,
    cuda_available,
    cuda_context_init,
    cuda_context_free,
    cuda_select,
    cuda_fwd,
    cuda_combine,
    cuda_merge_state,
    cuda_synchronize,
    cuda_device_alloc,
    cuda_device_free,
    cuda_device_copy,
};
