/* Subcommands of the fa3c command. */
#ifndef FA3C_TOOLS_H
#define FA3C_TOOLS_H

#include "core/internal.h"

#ifdef FA3C_HAVE_CUDA
#define FA3C_TOOLS_CUDA_BUILT 1
#else
#define FA3C_TOOLS_CUDA_BUILT 0
#endif

/* argv[0] is "demo". Returns the process exit code (0 OK, 1 FAIL, 2 usage). */
int fa3c_cmd_demo(int argc, char **argv);
/* argv[0] is "bench". Returns the process exit code (0 OK, 1 error, 2 usage). */
int fa3c_cmd_bench(int argc, char **argv);

#endif
