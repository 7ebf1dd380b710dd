/* The backend registry: a constant table, best backend first. */
#include "core/internal.h"

#include <string.h>

static const fa3c_backend *const registry[] = {
#ifdef FA3C_HAVE_CUDA_BACKEND
    &fa3c_backend_cuda,
#endif
    &fa3c_backend_cpu,
    &fa3c_backend_cpu_ref,
};

#define REGISTRY_SIZE ((int)(sizeof registry / sizeof registry[0]))

int fa3c_backend_count(void) { return REGISTRY_SIZE; }

const char *fa3c_backend_name(int index) {
    return index >= 0 && index < REGISTRY_SIZE ? registry[index]->name : NULL;
}

const char *fa3c_backend_description(int index) {
    return index >= 0 && index < REGISTRY_SIZE ? registry[index]->description : NULL;
}

int fa3c_backend_available(int index) {
    return index >= 0 && index < REGISTRY_SIZE && registry[index]->available();
}

fa3c_device_type fa3c_backend_device_type(int index) {
    return index >= 0 && index < REGISTRY_SIZE ? registry[index]->device_type : FA3C_DEVICE_CPU;
}

/* The backend called name, or the best available one when name is NULL or empty. */
fa3c_status fa3c_backend_find(const char *name, const fa3c_backend **out) {
    for (int i = 0; i < REGISTRY_SIZE; i++) {
        bool wanted = name && name[0] ? strcmp(registry[i]->name, name) == 0 : registry[i]->available();
        if (!wanted) continue;
        if (!registry[i]->available())
            return fa3c_fail(FA3C_ERROR_UNSUPPORTED, "backend: '%s' is not available on this machine", name);
        *out = registry[i];
        return FA3C_OK;
    }
    if (name && name[0]) {
        char names[256] = "";
        for (int i = 0; i < REGISTRY_SIZE; i++) {
            if (i) strncat(names, ", ", sizeof names - strlen(names) - 1);
            strncat(names, registry[i]->name, sizeof names - strlen(names) - 1);
        }
        return fa3c_fail(FA3C_ERROR_INVALID_ARGUMENT, "backend: expected one of %s, got '%s'", names, name);
    }
    return fa3c_fail(FA3C_ERROR_UNSUPPORTED, "backend: none available");
}
