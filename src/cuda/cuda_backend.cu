// The cuda backend: context (device, properties, workspace), device memory, kernel selection and
// the forward's order of launches on the context's stream:
//   nothing to do (total_q == 0 or h_k == 0)      -> no launch
//   no keys at all (total_k + total_new == 0)     -> fill out 0, lse +inf
//   otherwise: append (k_new) -> split counts (exact splits of a varlen call without metadata)
//              -> attention -> combine (W > 1 slots, unless the decode kernel combines itself)
//   attention: a tensor-core kernel (wgmma on Hopper for prefill-shaped calls with d = dv = 64,
//   128 or 256 and for MLA (qv), else mma.sync), or the SIMT fallback ("simple": qv off Hopper,
//   e4m3 with rotary, head dims without a tile, unaligned rows), which always uses FA3's exact
//   split partition.
// A forward can be captured into a CUDA graph: it allocates and synchronises nothing once the
// context's workspace is large enough (an earlier forward outside capture sized it), and checks
// scheduler_metadata on the device instead of on the host (include/fa3c.h, fa3c_fwd).
// Shape legend as in include/fa3c.h (b, s_q, s_k, s_new, h, h_k, d, dv, S).
#include "cuda/cuda_internal.cuh"

#include <stdlib.h>
#include <string.h>

fa3c_status cuda_fail(cudaError_t err, const char *what) {
    // The runtime also keeps a failed call's error as the thread's "last error", which the next
    // launch check (cudaGetLastError) would report as its own: read it off here, so the context
    // stays usable after e.g. an out-of-memory. (Sticky errors stay; every later call reports them.)
    (void)cudaGetLastError();
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
    fa3c_cuda_attn_d64,  fa3c_cuda_attn_d96,  fa3c_cuda_attn_d128, fa3c_cuda_attn_d192,
    fa3c_cuda_attn_d256, fa3c_cuda_attn_sm90, fa3c_cuda_attn_e4m3, fa3c_cuda_attn_mla,
};
static constexpr int kernel_group_size[] = {
    CUDA_ATTN_KERNELS_PER_BUCKET, CUDA_ATTN_KERNELS_PER_BUCKET, CUDA_ATTN_KERNELS_PER_BUCKET,
    2 * CUDA_ATTN_KERNELS_PER_BUCKET, CUDA_ATTN_KERNELS_PER_BUCKET, CUDA_ATTN_SM90_KERNELS, CUDA_ATTN_E4M3_KERNELS,
    CUDA_ATTN_MLA_KERNELS,
};
#define KERNEL_GROUPS ((int)(sizeof kernel_groups / sizeof kernel_groups[0]))

// Kernel id = group * KERNEL_GROUP_MAX + index within the group.
#define KERNEL_GROUP_MAX 16
static constexpr bool kernel_groups_fit(int gi) {
    return gi == KERNEL_GROUPS || (kernel_group_size[gi] <= KERNEL_GROUP_MAX && kernel_groups_fit(gi + 1));
}
static_assert(kernel_groups_fit(0), "a kernel group larger than KERNEL_GROUP_MAX would alias the next group's ids");
static const cuda_attn_kernel *kernel_by_id(int32_t id) {
    int gi = id / KERNEL_GROUP_MAX, ki = id % KERNEL_GROUP_MAX;
    if (id < 0 || gi >= KERNEL_GROUPS || ki >= kernel_group_size[gi]) return NULL;
    return &kernel_groups[gi][ki];
}

static int32_t kernel_find(int hd, int dv, int bf16, int e4m3, int decode, int sm90, int qv, int wide) {
    for (int gi = 0; gi < KERNEL_GROUPS; gi++)
        for (int ki = 0; ki < kernel_group_size[gi]; ki++) {
            const cuda_attn_kernel *k = &kernel_groups[gi][ki];
            if (k->hd == hd && k->dv == dv && k->bf16 == bf16 && k->e4m3 == e4m3 && k->decode == decode &&
                k->sm90 == sm90 && k->qv == qv && k->wide == wide)
                return gi * KERNEL_GROUP_MAX + ki;
        }
    return -1;
}

// ---------------------------------------------------------------------------------------------
// Backend entry points

static bool cuda_available(void) { return fa3c_cuda_device_count() > 0; }

// $FA3C_CUDA_SPLIT: exact, fill (default) or max (cuda_internal.cuh, CUDA_SPLIT_*).
static fa3c_status split_mode_from_env(int *mode) {
    const char *v = getenv("FA3C_CUDA_SPLIT");
    if (!v || !*v || strcmp(v, "fill") == 0) *mode = CUDA_SPLIT_FILL;
    else if (strcmp(v, "exact") == 0) *mode = CUDA_SPLIT_EXACT;
    else if (strcmp(v, "max") == 0) *mode = CUDA_SPLIT_MAX;
    else return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "FA3C_CUDA_SPLIT: expected exact, fill or max, got \"%s\"", v);
    return FA3C_OK;
}

// On/off switches that force the other paths (tests run both), default 1:
//   $FA3C_CUDA_SM90     compute capability 9.x devices run the wgmma kernels; 0 keeps every problem
//                       on the mma.sync kernels;
//   $FA3C_CUDA_CLUSTER  the decode shape on 9.x combines its split slots inside a thread block
//                       cluster; 0 keeps the counter-and-global-memory combine;
//   $FA3C_CUDA_WIDE     unpaged problems without a local / chunk mask (causal ones with long keys:
//                       wide_min_keys) run the wgmma kernels' wide key tiles (16-bit d 128: 176
//                       keys, d 256: 80; e4m3 d 128: 256, d 256: 128); 0 keeps them on the 128 / 64-key
//                       tiles.
static fa3c_status switch_from_env(const char *name, int *on) {
    const char *v = getenv(name);
    if (!v || !*v || strcmp(v, "1") == 0) *on = 1;
    else if (strcmp(v, "0") == 0) *on = 0;
    else return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "%s: expected 0 or 1, got \"%s\"", name, v);
    return FA3C_OK;
}

// $FA3C_CUDA_CTAS: the persistent wgmma kernel's grid: unset, persistent_ctas' choice; 0, one CTA
// per work item (no CTA walks two); N, at most N CTAs (tests force many items a CTA with a small N).
static fa3c_status ctas_from_env(int *ctas) {
    const char *v = getenv("FA3C_CUDA_CTAS");
    *ctas = -1;
    if (!v || !*v) return FA3C_OK;
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < 0 || n > (1 << 30))
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "FA3C_CUDA_CTAS: expected a count >= 0, got \"%s\"", v);
    *ctas = (int)n;
    return FA3C_OK;
}

static void state_free(cuda_state *st) {
    if (st->ws.ptr) cudaFree(st->ws.ptr);
    if (st->counts.ptr) cudaFree(st->counts.ptr);
    if (st->sched) cudaFree(st->sched);
    if (st->done) cudaEventDestroy(st->done);
    for (int i = 0; i < st->n_retired; i++) cudaFree(st->retired[i]);
    free(st->retired);
    free(st->occupancy);
    free(st->cluster);
    free(st);
}

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
    int split_mode, sm90, ctas, cluster, wide;
    FA3C_TRY(split_mode_from_env(&split_mode));
    FA3C_TRY(switch_from_env("FA3C_CUDA_SM90", &sm90));
    FA3C_TRY(ctas_from_env(&ctas));
    FA3C_TRY(switch_from_env("FA3C_CUDA_CLUSTER", &cluster));
    FA3C_TRY(switch_from_env("FA3C_CUDA_WIDE", &wide));
    cuda_state *st = (cuda_state *)calloc(1, sizeof *st);
    int *occ = (int *)calloc((size_t)KERNEL_GROUPS * KERNEL_GROUP_MAX, sizeof(int));
    int *clu = (int *)calloc((size_t)KERNEL_GROUPS * KERNEL_GROUP_MAX, sizeof(int));
    if (!st || !occ || !clu) {
        free(st);
        free(occ);
        free(clu);
        return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "cuda: context state: out of memory");
    }
    st->device = opt->device_index;
    st->num_sm = prop.multiProcessorCount;
    st->cc_major = prop.major;
    st->cc_minor = prop.minor;
    st->smem_optin = prop.sharedMemPerBlockOptin;
    st->occupancy = occ;
    st->cluster = clu;
    st->split_mode = split_mode;
    st->ctas = ctas;
    st->sm90 = sm90 && prop.major == 9;
    st->wide = wide;
    // The bulk-copy tensor-map encoder (driver API, fetched through the runtime); $FA3C_CUDA_TMA=0
    // leaves it out, so the wgmma kernel gathers every tile with cp.async (tests force both paths).
    const char *tma_env = getenv("FA3C_CUDA_TMA");
    if (st->sm90 && !(tma_env && strcmp(tma_env, "0") == 0)) {
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &st->tma_encode, 12000, cudaEnableDefault,
                                             &q) != cudaSuccess || q != cudaDriverEntryPointSuccess) {
            st->tma_encode = NULL;
            (void)cudaGetLastError(); // no TMA is not an error of the next launch
        }
    }
    {
        cudaError_t err = cudaEventCreateWithFlags(&st->done, cudaEventDisableTiming);
        if (err != cudaSuccess) {
            st->done = NULL;
            state_free(st);
            return cuda_fail(err, "forward ordering event");
        }
    }
    // Allocated here, not at the first forward, so that any forward can be captured into a graph.
    if (st->sm90) {
        cudaError_t err = cudaMalloc((void **)&st->sched, 2 * sizeof(uint32_t));
        if (err == cudaSuccess) err = cudaMemset(st->sched, 0, 2 * sizeof(uint32_t));
        if (err != cudaSuccess) {
            state_free(st);
            return cuda_fail(err, "scheduler counters");
        }
    }
    // The shared-memory opt-in is a per-device property of each kernel; the occupancy follows it.
    for (int gi = 0; gi < KERNEL_GROUPS; gi++)
        for (int ki = 0; ki < kernel_group_size[gi]; ki++) {
            const cuda_attn_kernel *k = &kernel_groups[gi][ki];
            if (k->smem > st->smem_optin || (k->sm90 && !st->sm90)) continue;
            cudaError_t err = k->prepare();
            if (err == cudaSuccess) err = k->occupancy(&occ[gi * KERNEL_GROUP_MAX + ki]);
            if (err == cudaSuccess && k->cluster_max && cluster && prop.major >= 9)
                err = k->cluster_max(&clu[gi * KERNEL_GROUP_MAX + ki]);
            if (err != cudaSuccess) {
                state_free(st);
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
    cudaSetDevice(st->device); // the blocks belong to this device
    state_free(st);
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

// Device memory of at least `bytes` from buf (cuda_buffer: grows, never shrinks; zero-filled when
// `zero`). Growing is impossible while the stream is being captured into a CUDA graph (the
// allocation and the free of the old block would synchronise): such a forward fails before it
// launches anything, and the caller warms the context up with one forward of the largest shape
// outside capture. A block a captured forward has used is retired, not freed, when it is replaced.
// Outside capture cudaFree waits for the device, so work still queued on the old block finishes.
static fa3c_status buffer_get(fa3c_context *ctx, cuda_buffer *buf, size_t bytes, bool capturing, bool zero,
                              const char *what, void **ptr) {
    cuda_state *st = state_of(ctx);
    if (bytes > buf->bytes) {
        if (capturing)
            return fa3c_fail(FA3C_ERROR_UNSUPPORTED, "cuda: this forward needs %zu bytes of %s, the context holds %zu; "
                             "a forward being captured into a CUDA graph cannot allocate: run one forward of the "
                             "largest shape the graphs will hold on this context before capturing", bytes, what,
                             buf->bytes);
        if (buf->ptr && buf->pinned) {
            if (st->n_retired == st->cap_retired) {
                int cap = st->cap_retired ? 2 * st->cap_retired : 4;
                void **r = (void **)realloc(st->retired, (size_t)cap * sizeof *r);
                if (!r) return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "cuda: %s: out of host memory", what);
                st->retired = r;
                st->cap_retired = cap;
            }
            st->retired[st->n_retired++] = buf->ptr;
        } else if (buf->ptr) {
            CUDA_TRY(cudaFree(buf->ptr), "workspace (cudaFree)");
        }
        buf->ptr = NULL;
        buf->bytes = 0;
        buf->pinned = false;
        CUDA_TRY(cudaMalloc(&buf->ptr, bytes), "workspace (cudaMalloc)");
        buf->bytes = bytes;
        if (zero) CUDA_TRY(cudaMemsetAsync(buf->ptr, 0, bytes, stream_of(ctx)), "workspace (cudaMemsetAsync)");
    }
    if (capturing) buf->pinned = true;
    *ptr = buf->ptr;
    return FA3C_OK;
}

// ---------------------------------------------------------------------------------------------
// Selection: the one answer to "supported?" and "which kernel".

// Keys (s_k) from which a problem without paging or a local / chunk mask runs the wide-tile twin
// of its wgmma kernel (16-bit d 128: 176 keys, d 256: 80, e4m3 d 128: 256, d 256: 128), measured
// on H100 against the 128 / 64-key tile. Unmasked: from any length (e4m3 d 128, three runs in one
// call: 1.06-1.07x at 512 keys, 1.10-1.12x at 1k). Causal: from where the wide tile's cheaper keys
// outweigh the masked ones it adds past the diagonal (up to a tile a 128-row block, where the
// narrow tile wastes half of one), 16-bit each in two calls: d 128 from 16k (1.04x; 8k
// 0.97-1.00x, 512 0.80x), d 256 from 8k (1.00-1.09x; 4k 0.99-1.01x); e4m3 d 128 from 4k (1.05x,
// 16k 1.10x; across two calls, one each; in three runs of one call 1k 0.93x, 2k 1.01x); e4m3 d 256
// from any length: its narrow tile has 64 keys (one call: 1.15-1.18x at 512 keys, 1.20-1.33x at
// 1k, 1.31-1.47x beyond).
static int64_t wide_min_keys(int64_t hd, int e4m3, int causal) {
    if (!causal) return 0;
    return e4m3 ? (hd > 128 ? 0 : 4096) : hd > 128 ? 8192 : 16384;
}

static int64_t headdim_bucket(int64_t d) { return d <= 64 ? 64 : d <= 96 ? 96 : d <= 128 ? 128 : d <= 192 ? 192 : 256; }

// 16-byte rows: data pointer and every non-last stride (in bytes) a multiple of 16.
static bool rows_aligned(const fa3c_tensor *t) {
    if (!fa3c_present(t) || fa3c_numel(t) == 0) return true;
    if ((uintptr_t)t->data % 16) return false;
    const int64_t per16 = 16 / fa3c_dtype_size(t->dtype);
    for (int i = 0; i < t->ndim - 1; i++)
        if (t->stride[i] % per16) return false;
    return true;
}

// The tensor-core kernel of p, or NULL when none runs it (qv, head dims without a tile, unaligned
// rows, a grid or shared memory beyond the kernel's limits; e4m3 only with d = dv in the 64, 128
// and 256 buckets, whole 16-element chunks and no rotary).
static const cuda_attn_kernel *tensor_core_kernel(const cuda_state *st, const fa3c_problem *p, int32_t *id_out) {
    const fa3c_fwd_args *a = p->args;
    const fa3c_tensor *rows[] = {&a->q, &a->k, &a->v, &a->out, &a->k_new, &a->v_new, &a->qv};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        if (!rows_aligned(rows[i])) return NULL;
    int64_t g = p->h / p->h_k, rows_per_seq = p->s_q * (p->pack_gqa ? g : 1);
    const int bf16 = p->in_dtype == FA3C_DTYPE_BF16;
    int32_t id = -1;
    if (p->has_qv) { // MLA (d <= 64, dv 256 or 512): the Hopper kernel for any row count, else SIMT
        if (st->sm90 && !p->has_rotary && p->d <= 64 && p->dv <= 512)
            id = kernel_find(64, p->dv <= 256 ? 256 : 512, bf16, 0, 0, 1, 1, 0);
    } else {
        int64_t hd = headdim_bucket(p->d), dvb;
        if (p->dv == p->d) dvb = hd;
        else if (p->d > 128 && p->d <= 192 && p->dv > 96 && p->dv <= 128) dvb = 128;
        else return NULL;
        const int e4m3 = p->is_fp8;
        if (e4m3 && (p->d % 16 || p->has_rotary)) return NULL;
        // A sequence of at most 16 (packed) query rows runs the decode shape: its 4 warps split the
        // keys. More rows run the wgmma kernel where it exists (Hopper; d = dv = 64, 128 or 256; no q
        // rotary) unless its producer would gather every 16-bit K/V tile with cp.async (a paged cache
        // whose page size is not a power of two >= 16), which the mma.sync kernel does faster (H100,
        // d 128, 4k causal: 174 vs 139 TFLOP/s at page size 1); with FA3C_CUDA_TMA=0 it gathers anyway
        // (a test mode). e4m3 tiles are always gathered (and converted) by its producer.
        const int decode = rows_per_seq <= 16;
        const bool bulk_pages =
            !p->paged || !st->tma_encode || (p->page_size >= 16 && !(p->page_size & (p->page_size - 1)));
        const int wide = st->wide && !p->paged && !p->is_local && !p->chunk &&
                         p->s_k >= wide_min_keys(hd, e4m3, p->is_causal);
        if (st->sm90 && !decode && !p->has_rotary && dvb == hd && (bulk_pages || e4m3)) {
            if (wide) id = kernel_find((int)hd, (int)dvb, bf16, e4m3, 0, 1, 0, 1);
            if (id < 0) id = kernel_find((int)hd, (int)dvb, bf16, e4m3, 0, 1, 0, 0);
        }
        if (id < 0) id = kernel_find((int)hd, (int)dvb, bf16, e4m3, decode, 0, 0, 0);
    }
    const cuda_attn_kernel *k = kernel_by_id(id);
    if (!k) return NULL;
    int64_t num_m = (rows_per_seq + k->block_m - 1) / k->block_m;
    int64_t blocks = p->b * (p->pack_gqa ? p->h_k : p->h) * p->num_splits * num_m;
    if (rows_per_seq > INT32_MAX - k->block_m || blocks > INT32_MAX || k->smem > st->smem_optin) return NULL;
    *id_out = id;
    return k;
}

// Tensor-core kernel when one runs p, else the SIMT fallback ("simple", cuda_attn_simple.cu).
static fa3c_status cuda_select(const fa3c_context *ctx, const fa3c_problem *p, fa3c_kernel_choice *choice) {
    const cuda_state *st = state_of(ctx);
    if (p->total_q == 0 || p->h_k == 0 || p->no_keys) { // nothing to attend: at most a fill
        choice->kernel = -1;
        choice->name = p->no_keys && p->total_q > 0 && p->h_k > 0 ? "fill" : "none";
        return FA3C_OK;
    }
    int32_t id = -1;
    const cuda_attn_kernel *k = tensor_core_kernel(st, p, &id);
    if (k) {
        choice->kernel = id;
        choice->name = k->name;
        return FA3C_OK;
    }
    if (p->d > CUDA_SIMPLE_MAX_D || p->dv > CUDA_SIMPLE_MAX_DV)
        return fa3c_fail(FA3C_ERROR_UNSUPPORTED, "cuda: head dims d = %lld / dv = %lld: the cuda backend runs d <= %d "
                         "and dv <= %d", (long long)p->d, (long long)p->dv, CUDA_SIMPLE_MAX_D, CUDA_SIMPLE_MAX_DV);
    int64_t warps = p->b * p->h * p->s_q, blocks = (warps + 3) / 4;
    if (p->s_q > INT32_MAX || blocks > INT32_MAX)
        return fa3c_fail(FA3C_ERROR_UNSUPPORTED, "cuda: %lld query rows of %lld heads exceed the simple kernel's "
                         "32-bit grid", (long long)(p->b * p->s_q), (long long)p->h);
    choice->kernel = CUDA_ATTN_SIMPLE;
    choice->name = "simple";
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

// scalar: the element-by-element append (any dtype and row alignment) of the SIMT fallback.
static fa3c_status run_append(fa3c_context *ctx, const fa3c_problem *p, const cuda_seq_params *seq, bool scalar) {
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
        ap.rot_dtype = a->rotary_cos.dtype;
    }
    ap.scalar = scalar;
    ap.dtype = p->in_dtype;
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

// args->scheduler_metadata outside capture: its header and split vector come to the host and are
// checked against this call's signature (fa3c_sched_verify names the differing field). The copy
// synchronises with the stream, which is why a captured forward checks on the device instead.
static fa3c_status metadata_verify(fa3c_context *ctx, const fa3c_problem *p) {
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
    return st;
}

// args->scheduler_metadata during capture: the size is checked here, the header on the device at
// every replay (cuda_meta_check). The expected header is the one fa3c_sched_compute writes for
// this call's signature; it is computed from a copy of the call whose length tensors are host
// zeros, and again with ones: the slots that differ hold the length hash and stay unchecked, since
// metadata recomputed for new lengths between replays is what a captured decode step is given.
static fa3c_status metadata_expect(const fa3c_problem *p, cuda_meta_check *mc) {
    const fa3c_tensor *t = &p->args->scheduler_metadata;
    int64_t need = fa3c_sched_size(p);
    if (t->shape[0] != need)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT,
                         "scheduler_metadata: has %lld elements, this call needs %lld (metadata_size)",
                         (long long)t->shape[0], (long long)need);
    fa3c_fwd_args a = *p->args;
    fa3c_tensor *lengths[] = {&a.cu_seqlens_q, &a.cu_seqlens_k, &a.cu_seqlens_k_new, &a.seqused_q,
                              &a.seqused_k,    &a.leftpad_k,    &a.kv_batch_idx,     &a.seqlens_rotary};
    int64_t most = 1;
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++)
        if (fa3c_present(lengths[i]) && fa3c_numel(lengths[i]) > most) most = fa3c_numel(lengths[i]);
    int32_t *buf = (int32_t *)malloc((size_t)(most + 2 * need) * sizeof(int32_t));
    if (!buf) return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "cuda: scheduler_metadata check: out of memory");
    int32_t *vals = buf, *meta[2] = {buf + most, buf + most + need};
    fa3c_problem q = *p;
    q.args = &a;
    for (int pass = 0; pass < 2; pass++) {
        for (int64_t i = 0; i < most; i++) vals[i] = pass;
        for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
            if (!fa3c_present(lengths[i])) continue;
            lengths[i]->data = vals;
            lengths[i]->stride[0] = 1;
            lengths[i]->device_type = FA3C_DEVICE_CPU;
            lengths[i]->device_index = 0;
        }
        fa3c_sched_compute(&q, meta[pass]);
    }
    mc->meta = (const int32_t *)t->data;
    mc->mask = 0;
    for (int i = 0; i < FA3C_SCHED_HEADER; i++) {
        mc->expect[i] = meta[0][i];
        if (meta[0][i] == meta[1][i]) mc->mask |= 1u << i;
    }
    free(buf);
    return FA3C_OK;
}

// Slots (CTAs per sequence, head and m-block) of a split forward in pieces mode: one pass of
// resident CTAs over the GPU (W = SMs x CTAs an SM holds / CTAs of one slot), at least S in max
// mode, at most one per tile of the longest sequence and 256 (the combine's limit); for the
// decode shape outside max mode, fewer where each would get a short run of tiles
// (fa3c_decode_slots).
static int32_t pieces_for(const cuda_state *st, const fa3c_problem *p, int32_t kernel_id, const cuda_attn_kernel *k,
                          int64_t num_m) {
    int64_t base = p->b * (p->pack_gqa ? p->h_k : p->h) * num_m;
    int64_t w = (int64_t)p->num_sm * st->occupancy[kernel_id] / (base > 0 ? base : 1);
    if (st->split_mode == CUDA_SPLIT_MAX && w < p->num_splits) w = p->num_splits;
    int64_t tiles = (p->s_k + k->block_n - 1) / k->block_n;
    if (w > tiles) w = tiles;
    if (w > 256) w = 256;
    if (w < 1) w = 1;
    if (k->decode && st->split_mode != CUDA_SPLIT_MAX) w = fa3c_decode_slots(tiles, w);
    return (int32_t)w;
}

// The persistent wgmma kernel's grid (cuda_attn_params.ctas, sched): $FA3C_CUDA_CTAS, else SMs x
// resident CTAs. Where every work item has the same keys (no causal, local or chunk mask, one
// length for every sequence: not varlen, no cu_seqlens, seqused or leftpad) CTA c takes items c, c
// + ctas, ...; otherwise the CTAs take the next item in id order from a counter as they finish one
// (the longest m-blocks of a head first, the heads in order: the items in flight share K/V in L2).
static int32_t persistent_ctas(const cuda_state *st, const fa3c_problem *p, const cuda_attn_kernel *k, int32_t kernel_id,
                               uint32_t **sched) {
    const bool same_keys = !p->is_causal && !p->is_local && p->chunk == 0 && !p->is_varlen;
    const int32_t ctas = st->ctas >= 0 ? st->ctas : st->num_sm * st->occupancy[kernel_id];
    *sched = k->sm90 && !k->qv && !same_keys && ctas > 0 ? st->sched : NULL;
    return ctas;
}

// One bulk-copy tensor map of t (b, s, heads, d) / (total, heads, d): dims (d, rows, heads,
// batches), the middle two swapped when heads_first (the usual layout, heads inside a row: the
// encoder takes dims in order of increasing stride); boxes of box_cols columns x box_rows rows:
// 16-bit tensors in 64-column boxes with the 128-byte swizzle, e4m3 ones (box_cols = the kernel's
// head dim) unswizzled. False where the driver refuses the strides (the kernel then gathers).
static bool tma_map(const cuda_state *st, const fa3c_tensor *t, int box_cols, int box_rows, int heads_first,
                    CUtensorMap *map) {
    typedef CUresult (*encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                  const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                  CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
    const int n = t->ndim; // 4 batched, 3 varlen
    const int64_t rows = t->shape[n - 3], heads = t->shape[n - 2], width = t->shape[n - 1];
    const int64_t batches = n == 4 ? t->shape[0] : 1, es = fa3c_dtype_size(t->dtype);
    const int64_t sr = t->stride[n - 3], sh = t->stride[n - 2], sb = n == 4 ? t->stride[0] : rows * sr;
    if (t->stride[n - 1] != 1 || sr <= 0 || sh <= 0 || sb <= 0) return false;
    cuuint64_t dims[4] = {(cuuint64_t)width, (cuuint64_t)rows, (cuuint64_t)heads, (cuuint64_t)batches};
    cuuint64_t strides[3] = {(cuuint64_t)(sr * es), (cuuint64_t)(sh * es), (cuuint64_t)(sb * es)};
    cuuint32_t box[4] = {(cuuint32_t)box_cols, (cuuint32_t)box_rows, 1, 1}, elem[4] = {1, 1, 1, 1};
    if (heads_first) {
        dims[1] = (cuuint64_t)heads, dims[2] = (cuuint64_t)rows;
        strides[0] = (cuuint64_t)(sh * es), strides[1] = (cuuint64_t)(sr * es);
        box[1] = 1, box[2] = (cuuint32_t)box_rows;
    }
    CUtensorMapDataType dt = t->dtype == FA3C_DTYPE_BF16   ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                             : t->dtype == FA3C_DTYPE_F16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                          : CU_TENSOR_MAP_DATA_TYPE_UINT8;
    return ((encode_fn)st->tma_encode)(map, dt, 4, t->data, dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                       es == 1 ? CU_TENSOR_MAP_SWIZZLE_NONE : CU_TENSOR_MAP_SWIZZLE_128B,
                                       CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                       CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// An e4m3 tensor seen as rows of half as many 16-bit elements (its strides are even: rows_aligned).
static void as_16bit_rows(fa3c_tensor *t) {
    t->dtype = FA3C_DTYPE_BF16;
    t->shape[t->ndim - 1] /= 2;
    for (int i = 0; i < t->ndim - 1; i++) t->stride[i] /= 2;
}

static bool heads_inside_rows(const fa3c_tensor *t) { return t->stride[t->ndim - 2] <= t->stride[t->ndim - 3]; }

// The wgmma kernel's tensor maps: K and V of a contiguous-row cache, or of a paged one whose
// page_size is a power of two >= 16 (boxes of min(page_size, block_n) rows: the kernel aligns its
// tiles to them and issues one copy per page run); Q when its tile is rows of one head (not
// packed GQA).
// e4m3 d = 64: boxes of whole (bucket) rows into the producer's staging, unswizzled; d >= 128 (kept
// in e4m3 for wgmma's 8-bit form): K and V through a 16-bit view of their rows, 64 two-byte columns
// = 128 e4m3 a 128-byte swizzled box, as 16-bit tiles. The e4m3 kernel loads Q itself.
static void tma_maps(const cuda_state *st, const fa3c_problem *p, const cuda_attn_kernel *k, cuda_tma *tma) {
    const fa3c_fwd_args *a = p->args;
    if (!st->tma_encode) return;
    const bool pow2 = p->page_size > 0 && (p->page_size & (p->page_size - 1)) == 0;
    const int box = p->paged ? (int)(p->page_size < k->block_n ? p->page_size : k->block_n) : k->block_n;
    const bool view16 = k->e4m3 && k->hd >= 128;
    fa3c_tensor kt = a->k, vt = a->v;
    if (view16) {
        as_16bit_rows(&kt);
        as_16bit_rows(&vt);
    }
    const int cols = k->e4m3 && !view16 ? k->hd : 64;
    tma->varlen = p->varlen_k;
    tma->paged_rows = p->paged ? box : 0;
    tma->rows = p->paged ? 0 : (int32_t)a->k.shape[a->k.ndim - 3];
    tma->heads_first = heads_inside_rows(&a->k) && heads_inside_rows(&a->v);
    tma->on = (!p->paged || (pow2 && p->page_size >= 16)) && tma_map(st, &kt, cols, box, tma->heads_first, &tma->k) &&
              tma_map(st, &vt, cols, box, tma->heads_first, &tma->v);
    tma->q_varlen = p->varlen_q;
    tma->q_heads_first = heads_inside_rows(&a->q);
    tma->q_on = !p->pack_gqa && !k->e4m3 && tma_map(st, &a->q, 64, k->block_m, tma->q_heads_first, &tma->q);
}

// The SIMT fallback's launch: ap (filled by cuda_fwd, e4m3 descales included) plus dtypes and qv.
static fa3c_status run_simple(const fa3c_problem *p, const cuda_attn_params *ap, cudaStream_t stream) {
    const fa3c_fwd_args *a = p->args;
    cuda_simple_params sp;
    memset(&sp, 0, sizeof sp);
    sp.a = *ap;
    sp.in_dtype = p->in_dtype;
    sp.out_dtype = a->out.dtype;
    sp.rot_dtype = p->has_rotary ? a->rotary_cos.dtype : FA3C_DTYPE_NONE;
    sp.scale = p->scale;
    CUDA_TRY(cuda_simple_launch(&sp, stream), "simple attention kernel launch");
    return FA3C_OK;
}

static fa3c_status fwd_launch(fa3c_context *ctx, const fa3c_problem *p, const fa3c_kernel_choice *choice,
                              bool capturing) {
    const fa3c_fwd_args *a = p->args;
    cuda_state *cst = state_of(ctx);
    cudaStream_t stream = stream_of(ctx);
    if (p->no_keys) {
        CUDA_TRY(cuda_fill_launch(&a->out, 0.0f, stream), "fill out");
        if (fa3c_present(&a->softmax_lse)) CUDA_TRY(cuda_fill_launch(&a->softmax_lse, INFINITY, stream), "fill lse");
        return FA3C_OK;
    }
    const bool simple = choice->kernel == CUDA_ATTN_SIMPLE;
    const cuda_attn_kernel *kern = simple ? NULL : kernel_by_id(choice->kernel);
    if (!simple && !kern)
        return fa3c_fail(FA3C_ERROR_INTERNAL, "cuda: kernel choice %d is not a cuda kernel", (int)choice->kernel);
    cuda_seq_params seq = seq_params(p);
    const int32_t S = p->num_splits;
    const bool have_meta = fa3c_present(&a->scheduler_metadata), user_accum = fa3c_present(&a->out_accum);
    const int64_t g = p->h / p->h_k, grid_heads = p->pack_gqa ? p->h_k : p->h;
    const int64_t num_m = simple ? 1 : (p->s_q * (p->pack_gqa ? g : 1) + kern->block_m - 1) / kern->block_m;

    cuda_meta_check mc;
    memset(&mc, 0, sizeof mc);
    if (have_meta) FA3C_TRY(capturing ? metadata_expect(p, &mc) : metadata_verify(ctx, p));

    // W slots: FA3's S splits (exact, always for the SIMT fallback), or pieces when the partials
    // stay internal.
    const bool pieces = !simple && S > 1 && !user_accum && cst->split_mode != CUDA_SPLIT_EXACT;
    const int32_t W = pieces ? pieces_for(cst, p, choice->kernel, kern, num_m) : S;
    const bool exact_dyn = !pieces && S > 1 && p->is_varlen; // per-sequence split counts n_b
    const bool fused = pieces && W > 1 && kern->decode;     // the last CTA of a slot group combines
    // ... or, one m-block and at most a resident cluster of slots, the cluster combines in shared memory
    const bool cluster = fused && num_m == 1 && W <= cst->cluster[choice->kernel];

    // Workspace: [split counts (b, 16-byte padded)] [partial out] [partial lse].
    size_t off_splits = 0, off_out = 0, off_lse = 0, bytes = 0;
    if (exact_dyn && !have_meta) {
        off_splits = bytes;
        bytes += ((size_t)p->b * sizeof(int32_t) + 15) / 16 * 16;
    }
    int64_t rows = p->varlen_q ? p->total_q : p->b * p->s_q;
    if (W > 1 && !user_accum && !cluster) {
        off_out = bytes;
        bytes += (size_t)W * p->h * rows * p->dv * sizeof(float);
        off_lse = bytes;
        bytes += (size_t)W * p->h * rows * sizeof(float);
    }
    char *ws = NULL;
    int32_t *counts = NULL;
    if (bytes) FA3C_TRY(buffer_get(ctx, &cst->ws, bytes, capturing, false, "workspace", (void **)&ws));
    if (fused && !cluster)
        FA3C_TRY(buffer_get(ctx, &cst->counts, (size_t)p->b * grid_heads * num_m * sizeof(int32_t), capturing, true,
                            "split counters", (void **)&counts));

    if (p->append) FA3C_TRY(run_append(ctx, p, &seq, simple || p->is_fp8)); // e4m3 rows: the scalar append

    const int32_t *splits = NULL;
    if (exact_dyn && have_meta) splits = (const int32_t *)a->scheduler_metadata.data + FA3C_SCHED_HEADER;
    if (exact_dyn && !have_meta) {
        cuda_prepare_params pp;
        pp.seq = seq;
        pp.b = (int32_t)p->b;
        pp.rows_per_q = p->pack_gqa ? (int32_t)g : 1;
        pp.block_m = p->block_m;
        pp.block_n = p->block_n;
        pp.num_splits = S;
        pp.num_sm = p->num_sm;
        pp.heads = (int32_t)grid_heads;
        pp.splits = (int32_t *)(ws + off_splits);
        CUDA_TRY(cuda_prepare_launch(&pp, stream), "prepare kernel launch");
        splits = pp.splits;
    }

    partials pt;
    memset(&pt, 0, sizeof pt);
    if (W > 1 && !cluster) {
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
    if (p->has_qv) {
        ap.qv = a->qv.data;
        token_strides(&a->qv, p->varlen_q, &ap.qv_sb, &ap.qv_sr, &ap.qv_sh);
    }
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
    ap.grid_heads = (int32_t)grid_heads;
    ap.num_m_blocks = (int32_t)num_m;
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
    if (p->is_fp8) { // (b, h_k) descales; absent ones stay NULL (1)
        const fa3c_tensor *ds[3] = {&a->q_descale, &a->k_descale, &a->v_descale};
        const float **ptr[3] = {&ap.q_ds, &ap.k_ds, &ap.v_ds};
        int64_t *sb[3] = {&ap.qd_sb, &ap.kd_sb, &ap.vd_sb}, *sh[3] = {&ap.qd_sh, &ap.kd_sh, &ap.vd_sh};
        for (int i = 0; i < 3; i++) {
            if (!fa3c_present(ds[i])) continue;
            *ptr[i] = (const float *)ds[i]->data;
            *sb[i] = ds[i]->stride[0];
            *sh[i] = ds[i]->stride[1];
        }
    }
    ap.num_splits = W;
    ap.fd_g = fa3c_fastdiv_of((uint32_t)ap.g);
    ap.fd_heads = fa3c_fastdiv_of((uint32_t)ap.grid_heads);
    ap.fd_m_blocks = fa3c_fastdiv_of((uint32_t)ap.num_m_blocks);
    ap.fd_splits = fa3c_fastdiv_of((uint32_t)W);
    ap.split_block_n = p->block_n;
    ap.pieces = pieces;
    ap.splits_dyn = splits;
    ap.counts = counts;
    ap.cluster = cluster;
    if (W == 1 || fused) ap.meta = mc; // the attention kernel writes out and lse
    if (!simple) ap.ctas = persistent_ctas(cst, p, kern, choice->kernel, &ap.sched);
    if (simple) FA3C_TRY(run_simple(p, &ap, stream));
    else if (ap.num_m_blocks > 0) {
        cuda_tma tma;
        memset(&tma, 0, sizeof tma);
        if (kern->sm90) tma_maps(cst, p, kern, &tma);
        CUDA_TRY(kern->launch(&ap, &tma, stream), kern->name);
    }

    if (W > 1 && !fused) {
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
        cp.S = W;
        cp.b = (int32_t)p->b;
        cp.s = (int32_t)p->s_q;
        cp.h = (int32_t)p->h;
        cp.dv = (int32_t)p->dv;
        cp.fwd = 1;
        cp.seq = seq;
        cp.splits_dyn = splits;
        cp.meta = mc;
        CUDA_TRY(cuda_combine_launch(&cp, stream), "combine kernel launch");
    }
    return FA3C_OK;
}

// The forward. Its launches use the context's workspace and counters, which every forward shares:
// on another stream than the last forward's, it first waits for that one's work (an event recorded
// after each forward), so forwards through one context never overlap, whichever streams they are
// queued on. Under capture neither waits nor records: graphs are ordered by their caller (fa3c.h).
static fa3c_status cuda_fwd(fa3c_context *ctx, const fa3c_problem *p, const fa3c_sched_plan *plan,
                            const fa3c_kernel_choice *choice) {
    (void)plan; // device contexts get no host plan: split counts are computed in fwd_launch
    cuda_state *cst = state_of(ctx);
    cudaStream_t stream = stream_of(ctx);
    FA3C_TRY(use_device(ctx));
    if (p->total_q == 0 || p->h_k == 0) return FA3C_OK;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    CUDA_TRY(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing");
    const bool capturing = capture != cudaStreamCaptureStatusNone;
    if (!capturing && cst->have_last && cst->last != stream)
        CUDA_TRY(cudaStreamWaitEvent(stream, cst->done, 0), "cudaStreamWaitEvent (the last forward's stream)");
    FA3C_TRY(fwd_launch(ctx, p, choice, capturing));
    if (!capturing) {
        CUDA_TRY(cudaEventRecord(cst->done, stream), "cudaEventRecord");
        cst->last = stream;
        cst->have_last = true;
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
    "NVIDIA GPUs (sm_80+): wgmma + TMA (sm_90, MLA included) and mma.sync tensor-core attention, fp16/bf16/e4m3 "
    "(SIMT fallback for other head dims), paged KV, split-KV with combine",
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
