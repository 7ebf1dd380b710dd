/*
 * Out-of-memory and bad calls surface as statuses, and the context stays usable: on every
 * available backend, fa3c_device_alloc of 2^60 bytes (host memory for CPU backends, device memory
 * for GPU ones) returns FA3C_ERROR_OUT_OF_MEMORY with a message naming the request and a NULL
 * pointer; a rejected forward (head dim 7) returns INVALID_ARGUMENT; afterwards the same context
 * runs a forward that passes FA3's rule against the naive reference, and its last error is
 * cleared by the successful call.
 * Under ASan / TSan the huge malloc needs allocator_may_return_null=1 (set by ctest).
 */
#include "testutil.h"

#include <stdio.h>
#include <string.h>

static int check_backend(const char *name) {
    fa3c_context_options opt;
    fa3c_context_options_init(&opt);
    opt.backend = name;
    opt.num_threads = 2;
    fa3c_context *ctx;
    if (fa3c_context_create(&opt, &ctx) != FA3C_OK) {
        printf("FAIL [%s]: context: %s\n", name, fa3c_last_error());
        return 1;
    }
    int bad = 0;
    void *ptr = (void *)&bad;
    fa3c_status st = fa3c_device_alloc(ctx, (size_t)1 << 60, &ptr);
    if (st != FA3C_ERROR_OUT_OF_MEMORY || fa3c_last_error()[0] == '\0' || ptr != NULL) {
        printf("FAIL [%s]: alloc of 2^60 bytes: %s, \"%s\", ptr %p (expected out of memory, a message, NULL)\n",
               name, fa3c_status_string(st), fa3c_last_error(), ptr);
        bad = 1;
    } else {
        printf("ok   [%s]: alloc of 2^60 bytes: %s: %s\n", name, fa3c_status_string(st), fa3c_last_error());
    }

    tu_case c;
    tu_case_init(&c);
    c.mode = TU_KVCACHE, c.b = 3, c.s_q = 2, c.s_k = 300, c.h = 8, c.h_k = 2, c.d = c.dv = 128;
    c.page_size = 16, c.s_new = 2, c.rotary = 2, c.num_splits = 3, c.out_accum = true, c.seed = 77;
    tu_case_describe(&c, "");
    tu_prepared p;
    if (tu_prepare(&c, &p) != 0) {
        printf("FAIL [%s]: could not prepare %s\n", name, c.name);
        fa3c_context_destroy(ctx);
        return 1;
    }
    /* A rejected forward in between (host pointers with d = 7: rejected before any memory is read). */
    fa3c_fwd_args a = p.args;
    a.q.shape[3] = 7;
    st = fa3c_fwd(ctx, &a);
    if (st != FA3C_ERROR_INVALID_ARGUMENT || fa3c_last_error()[0] == '\0') {
        printf("FAIL [%s]: a forward with d = 7 gave %s: \"%s\"\n", name, fa3c_status_string(st), fa3c_last_error());
        bad = 1;
    }
    tu_report rep;
    tu_verdict v = tu_run(ctx, &p, TU_RULE_FA3, &rep);
    if (v != TU_PASS || fa3c_last_error()[0] != '\0') {
        printf("FAIL [%s]: the forward after the errors: %s (last error \"%s\")\n", name,
               v == TU_PASS ? "passed" : rep.msg, fa3c_last_error());
        bad = 1;
    } else {
        printf("ok   [%s]: the context still runs %s (err %.3g <= %.3g)\n", name, c.name, rep.max_err, rep.bound);
    }
    tu_prepared_free(&p);
    fa3c_context_destroy(ctx);
    return bad;
}

int main(void) {
    int passed = 0, failed = 0, skipped = 0;
    for (int i = 0; i < fa3c_backend_count(); i++) {
        if (!fa3c_backend_available(i)) {
            printf("skip [%s]: not available\n", fa3c_backend_name(i));
            skipped++;
            continue;
        }
        if (check_backend(fa3c_backend_name(i))) failed++;
        else passed++;
    }
    printf("test_errors_ctx: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
