/* The fa3c command: `fa3c info`, `fa3c demo`, `fa3c bench`. */
#include "tools/tools.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f, "usage: fa3c <command> [options]\n"
               "  info                 version, backends and devices\n"
               "  demo [options]       a small serving trace (prefill + decode) checked against a naive\n"
               "                       attention; `fa3c demo --help` for its options\n"
               "  bench [options]      forward throughput with the machine's anchors (FMA peak, memcpy);\n"
               "                       `fa3c bench --help` for its options\n");
}

static int cmd_info(void) {
    printf("fa3c %s (header %d.%d.%d)\n", fa3c_version_string(), FA3C_VERSION_MAJOR, FA3C_VERSION_MINOR,
           FA3C_VERSION_PATCH);
    printf("backends (best first):\n");
    for (int i = 0; i < fa3c_backend_count(); i++)
        printf("  %-8s %-13s %s\n", fa3c_backend_name(i), fa3c_backend_available(i) ? "available" : "unavailable",
               fa3c_backend_description(i));
    fa3c_context *ctx;
    if (fa3c_context_create(NULL, &ctx) == FA3C_OK) {
        printf("default backend: %s (%d threads)\n", fa3c_context_backend(ctx), fa3c_context_num_threads(ctx));
        fa3c_context_destroy(ctx);
    } else {
        printf("default backend: none (%s)\n", fa3c_last_error());
    }
    printf("cpu: %d cores available to this process\n", fa3c_available_cores());
    int n = fa3c_cuda_device_count();
    printf("cuda devices: %d%s\n", n, FA3C_TOOLS_CUDA_BUILT ? "" : " (built without CUDA)");
    for (int d = 0; d < n; d++) {
        char name[256];
        int sm, major, minor;
        if (fa3c_cuda_device_info(d, name, sizeof name, &sm, &major, &minor) == FA3C_OK)
            printf("  cuda:%d %s, sm_%d%d, %d SMs\n", d, name, major, minor, sm);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "info")) return cmd_info();
    if (!strcmp(argv[1], "demo")) return fa3c_cmd_demo(argc - 1, argv + 1);
    if (!strcmp(argv[1], "bench")) return fa3c_cmd_bench(argc - 1, argv + 1);
    fprintf(stderr, "fa3c: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
