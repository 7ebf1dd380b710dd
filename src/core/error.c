/* Thread-local error detail behind fa3c_last_error(); the only per-thread state of the library. */
#include "core/internal.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char last_error[1024];

fa3c_status fa3c_fail(fa3c_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

void fa3c_clear_error(void) { last_error[0] = '\0'; }

const char *fa3c_last_error(void) { return last_error; }

const char *fa3c_status_string(fa3c_status status) {
    switch (status) {
    case FA3C_OK: return "ok";
    case FA3C_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case FA3C_ERROR_UNSUPPORTED: return "unsupported";
    case FA3C_ERROR_OUT_OF_MEMORY: return "out of memory";
    case FA3C_ERROR_DEVICE: return "device error";
    case FA3C_ERROR_INTERNAL: return "internal error";
    }
    return "unknown status";
}
