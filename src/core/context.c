/* Contexts: one per device, owning the backend choice, stream, thread pool and device facts. */
#include "core/internal.h"

#include <stdlib.h>
#include <string.h>

void fa3c_context_options_init(fa3c_context_options *o) {
    if (!o) return;
    memset(o, 0, sizeof *o);
    o->check_inputs = -1;
}

/* A positive integer from the environment, or 0 when unset or malformed. */
static int env_int(const char *name) {
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end;
    long v = strtol(s, &end, 10);
    return (*end == '\0' && v > 0 && v < 1 << 20) ? (int)v : 0;
}

fa3c_status fa3c_context_create(const fa3c_context_options *options, fa3c_context **out) {
    fa3c_clear_error();
    if (!out) return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "ctx: NULL output pointer");
    *out = NULL;
    fa3c_context_options opt;
    if (options) opt = *options;
    else fa3c_context_options_init(&opt);
    if (opt.num_threads < 0)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "num_threads: expected >= 0, got %d", opt.num_threads);
    if (opt.num_sm < 0) return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "num_sm: expected >= 0, got %d", opt.num_sm);
    if (opt.check_inputs < -1 || opt.check_inputs > 1)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "check_inputs: expected -1, 0 or 1, got %d", opt.check_inputs);
    if (opt.device_index < 0)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "device_index: expected >= 0, got %d", opt.device_index);

    const char *name = opt.backend ? opt.backend : getenv("FA3C_BACKEND");
    const fa3c_backend *backend;
    FA3C_TRY(fa3c_backend_find(name, &backend));

    fa3c_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "context: out of memory");
    ctx->backend = backend;
    ctx->device_type = backend->device_type;
    ctx->device_index = backend->device_type == FA3C_DEVICE_CPU ? 0 : opt.device_index;
    ctx->stream = opt.stream;
    if (opt.check_inputs >= 0) ctx->check_inputs = opt.check_inputs == 1;
    else ctx->check_inputs = getenv("FA3C_CHECK") && strcmp(getenv("FA3C_CHECK"), "1") == 0;
    ctx->num_threads = opt.num_threads ? opt.num_threads : env_int("FA3C_NUM_THREADS");
    if (!ctx->num_threads) ctx->num_threads = fa3c_available_cores();
    /* CPU backends count threads as "SMs"; GPU backends overwrite num_sm in context_init. */
    ctx->num_sm = ctx->num_threads;

    fa3c_status st = FA3C_OK;
    if (backend->device_type == FA3C_DEVICE_CPU) st = fa3c_threadpool_create(ctx->num_threads, &ctx->pool);
    if (st == FA3C_OK) st = backend->context_init(ctx, &opt);
    if (st != FA3C_OK) {
        fa3c_threadpool_destroy(ctx->pool);
        free(ctx);
        return st;
    }
    if (opt.num_sm > 0) ctx->num_sm = opt.num_sm;
    *out = ctx;
    return FA3C_OK;
}

void fa3c_context_destroy(fa3c_context *ctx) {
    if (!ctx) return;
    ctx->backend->context_free(ctx);
    fa3c_threadpool_destroy(ctx->pool);
    free(ctx->sched_scratch);
    free(ctx);
}

const char *fa3c_context_backend(const fa3c_context *ctx) { return ctx ? ctx->backend->name : NULL; }
fa3c_device_type fa3c_context_device_type(const fa3c_context *ctx) { return ctx->device_type; }
int32_t fa3c_context_num_sm(const fa3c_context *ctx) { return ctx->num_sm; }
int32_t fa3c_context_num_threads(const fa3c_context *ctx) { return ctx->num_threads; }

fa3c_status fa3c_context_set_stream(fa3c_context *ctx, void *stream) {
    fa3c_clear_error();
    if (!ctx) return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "ctx: NULL");
    if (ctx->device_type == FA3C_DEVICE_CPU && stream)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "stream: the %s backend has no streams", ctx->backend->name);
    ctx->stream = stream;
    return FA3C_OK;
}

fa3c_status fa3c_context_synchronize(fa3c_context *ctx) {
    fa3c_clear_error();
    if (!ctx) return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "ctx: NULL");
    return ctx->backend->synchronize(ctx);
}

fa3c_status fa3c_device_alloc(fa3c_context *ctx, size_t bytes, void **ptr) {
    fa3c_clear_error();
    if (!ctx || !ptr) return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "%s: NULL", ctx ? "ptr" : "ctx");
    if (ctx->backend->device_alloc) return ctx->backend->device_alloc(ctx, bytes, ptr);
    *ptr = malloc(bytes ? bytes : 1);
    return *ptr ? FA3C_OK : fa3c_fail(FA3C_ERROR_OUT_OF_MEMORY, "device_alloc: %zu bytes", bytes);
}

void fa3c_device_free(fa3c_context *ctx, void *ptr) {
    if (!ctx || !ptr) return;
    if (ctx->backend->device_free) ctx->backend->device_free(ctx, ptr);
    else free(ptr);
}

fa3c_status fa3c_device_copy(fa3c_context *ctx, void *dst, const void *src, size_t bytes, fa3c_copy_kind kind) {
    fa3c_clear_error();
    if (!ctx) return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "ctx: NULL");
    if (kind < FA3C_COPY_HOST_TO_DEVICE || kind > FA3C_COPY_DEVICE_TO_DEVICE)
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "kind: expected 0, 1 or 2, got %d", (int)kind);
    if (bytes && (!dst || !src)) return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "%s: NULL", dst ? "src" : "dst");
    if (ctx->backend->device_copy) return ctx->backend->device_copy(ctx, dst, src, bytes, kind);
    if (bytes) memmove(dst, src, bytes);
    return FA3C_OK;
}
