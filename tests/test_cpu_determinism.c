/*
 * The cpu backend is bitwise deterministic for a fixed thread count: the same forward repeated
 * gives identical out, lse and split partials (every byte of their buffers), at 1, 2 and 5
 * threads (5 oversubscribes the cores, so the order in which threads claim items varies run to
 * run). Cases cover each path of the backend: varlen prefill with GQA packing, causal, softcap and
 * sinks; paged kvcache decode with append, rotary and FA3 splits into out_accum; fp8 MQA decode
 * with descales (one kv head: the internal KV split); qv with a local window and chunks.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPEATS 4

/* The output buffers a forward writes (out, lse and, when split, the partials). */
typedef struct outputs {
    tu_buf *buf[4];
    int     n;
} outputs;

static void add_output(outputs *o, tu_arena *a, const fa3c_tensor *t) {
    if (t->dtype == FA3C_DTYPE_NONE) return;
    tu_buf *b = tu_arena_find(a, t->data);
    if (b) o->buf[o->n++] = b;
}

/* Runs the case REPEATS times on ctx; 0 when every run left identical bytes. */
static int check_case(fa3c_context *ctx, tu_prepared *p, char *msg, size_t msg_len) {
    tu_arena acc;
    tu_arena_init(&acc);
    fa3c_fwd_args a = p->args;
    fa3c_fwd_info info;
    if (fa3c_fwd_query(ctx, &a, &info) != FA3C_OK) {
        snprintf(msg, msg_len, "fwd_query: %s", fa3c_last_error());
        tu_arena_free(&acc);
        return 1;
    }
    if (p->c.out_accum && info.num_splits > 1) {
        tu_accum_tensors(&acc, &p->exact, info.num_splits, &a.out_accum, &a.lse_accum);
    }
    outputs o = {0};
    add_output(&o, &p->arena, &a.out);
    add_output(&o, &p->arena, &a.softmax_lse);
    add_output(&o, &acc, &a.out_accum);
    add_output(&o, &acc, &a.lse_accum);
    uint8_t *first[4] = {0};
    int bad = 0;
    for (int rep = 0; rep < REPEATS && !bad; rep++) {
        tu_arena_restore(&p->arena); /* the cache as before any append */
        for (int i = 0; i < o.n; i++) memset(o.buf[i]->base + TU_GUARD, TU_FILL_OUT, o.buf[i]->bytes);
        if (fa3c_fwd(ctx, &a) != FA3C_OK) {
            snprintf(msg, msg_len, "fwd: %s", fa3c_last_error());
            bad = 1;
            break;
        }
        for (int i = 0; i < o.n; i++) {
            const uint8_t *data = o.buf[i]->base + TU_GUARD;
            if (rep == 0) {
                first[i] = malloc(o.buf[i]->bytes);
                memcpy(first[i], data, o.buf[i]->bytes);
            } else if (memcmp(first[i], data, o.buf[i]->bytes) != 0) {
                size_t at = 0;
                while (first[i][at] == data[at]) at++;
                snprintf(msg, msg_len, "run %d differs from run 0 in output buffer %d at byte %zu (S=%d)", rep, i, at,
                         info.num_splits);
                bad = 1;
            }
        }
    }
    for (int i = 0; i < o.n; i++) free(first[i]);
    tu_arena_free(&acc);
    return bad;
}

static int make_cases(tu_case *c) {
    int n = 0;
    tu_case_init(&c[n]); /* varlen prefill: GQA 4, causal, softcap, bf16 sinks */
    c[n].mode = TU_VARLEN, c[n].dtype = FA3C_DTYPE_BF16, c[n].b = 5, c[n].s_q = 300, c[n].s_k = 340;
    c[n].h = 8, c[n].h_k = 2, c[n].d = 128, c[n].dv = 128, c[n].causal = true, c[n].softcap = 30.0;
    c[n].sinks = FA3C_DTYPE_BF16, c[n].seed = 11;
    n++;
    tu_case_init(&c[n]); /* paged decode + append + rotary, FA3 splits into out_accum */
    c[n].mode = TU_KVCACHE, c[n].dtype = FA3C_DTYPE_F16, c[n].b = 3, c[n].s_q = 1, c[n].s_k = 700;
    c[n].h = 8, c[n].h_k = 2, c[n].d = 64, c[n].dv = 64, c[n].page_size = 16, c[n].s_new = 1, c[n].rotary = 2;
    c[n].causal = true, c[n].num_splits = 3, c[n].out_accum = true, c[n].seed = 12;
    n++;
    tu_case_init(&c[n]); /* fp8 MQA decode: one kv head, so the KV range splits internally */
    c[n].mode = TU_KVCACHE, c[n].dtype = FA3C_DTYPE_E4M3, c[n].b = 1, c[n].s_q = 1, c[n].s_k = 2049;
    c[n].h = 6, c[n].h_k = 1, c[n].d = 128, c[n].dv = 128, c[n].descale = true, c[n].seed = 13;
    n++;
    tu_case_init(&c[n]); /* qv (MLA absorbed), local window and chunks, batched */
    c[n].mode = TU_BATCHED, c[n].dtype = FA3C_DTYPE_BF16, c[n].b = 2, c[n].s_q = 113, c[n].s_k = 239;
    c[n].h = 4, c[n].h_k = 1, c[n].d = 64, c[n].dv = 512, c[n].qv = true, c[n].wl = 50, c[n].wr = 7;
    c[n].chunk = 64, c[n].seed = 14;
    n++;
    return n;
}

int main(void) {
    tu_case cases[8];
    int ncases = make_cases(cases);
    static const int threads[3] = {1, 2, 5};
    int passed = 0, failed = 0;
    for (int ci = 0; ci < ncases; ci++) {
        tu_case_describe(&cases[ci], "");
        tu_prepared p;
        if (tu_prepare(&cases[ci], &p) != 0) {
            printf("FAIL %s: could not prepare the case\n", cases[ci].name);
            failed++;
            continue;
        }
        for (int t = 0; t < 3; t++) {
            fa3c_context_options opt;
            fa3c_context_options_init(&opt);
            opt.backend = "cpu";
            opt.num_threads = threads[t];
            fa3c_context *ctx;
            char msg[256] = "";
            int bad;
            if (fa3c_context_create(&opt, &ctx) != FA3C_OK) {
                snprintf(msg, sizeof msg, "context: %s", fa3c_last_error());
                bad = 1;
            } else {
                bad = check_case(ctx, &p, msg, sizeof msg);
                fa3c_context_destroy(ctx);
            }
            printf("%s %s threads=%d %s\n", bad ? "FAIL" : "ok  ", cases[ci].name, threads[t], msg);
            if (bad) failed++;
            else passed++;
        }
        tu_prepared_free(&p);
    }
    printf("test_cpu_determinism: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
