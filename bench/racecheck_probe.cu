// Does compute-sanitizer racecheck accept the dyn-sched id hand-over? The same protocol, alone:
// warpgroup 0 = producer (warp 0 writes the slot), warpgroups 1..NCW = consumers.
//   nvcc -arch=sm_90a -O3 race_probe.cu -o probe && compute-sanitizer --tool racecheck ./probe
// mode 0: per-warpgroup full/empty pairs (bar.arrive / bar.sync, 160 threads) as in the branch;
// mode 1: one pair over all consumers (32 + 128 NCW threads), as FA3's DynamicPersistentTileScheduler;
// mode 2: as 1, but only producer warp 0 reads the slot (FA3: one producer warp, no barrier 1).
#include <cstdio>
#define NCW 2
__device__ __forceinline__ void bsync(int id, int n) { asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory"); }
__device__ __forceinline__ void barrive(int id, int n) { asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(n) : "memory"); }
__global__ void probe(int mode, int iters, unsigned *out) {
    __shared__ unsigned ids[2];
    const int tid = threadIdx.x, wg = tid >> 7;
    const int pairs = mode >= 1 ? 1 : NCW, cnt = mode >= 1 ? 32 + 128 * NCW : 160;
    if (wg == 0) {
        unsigned acc = 0;
        for (int u = 0; u < iters; u++) {
            if (tid < 32) {
                for (int w = 0; w < pairs; w++) bsync(6 + 2 * w, cnt);
                if (tid == 0) ids[u & 1] = u + 1000;
                for (int w = 0; w < pairs; w++) barrive(5 + 2 * w, cnt);
            }
            if (mode == 2) {
                if (tid < 32) acc += ids[u & 1];
            } else {
                bsync(1, 128);
                acc += ids[u & 1];
            }
        }
        out[tid] = acc;
    } else {
        const int w = mode >= 1 ? 0 : wg - 1;
        unsigned acc = 0;
        barrive(6 + 2 * w, cnt);
        for (int u = 0; u < iters; u++) {
            bsync(5 + 2 * w, cnt);
            acc += ids[u & 1];
            if (u + 1 < iters) barrive(6 + 2 * w, cnt);
        }
        out[tid] = acc;
    }
}
int main() {
    unsigned *out;
    cudaMalloc(&out, 512 * 4);
    for (int mode = 0; mode <= 2; mode++) {
        probe<<<4, 128 * (NCW + 1)>>>(mode, 64, out);
        printf("mode %d: %s\n", mode, cudaGetErrorString(cudaDeviceSynchronize()));
    }
    return 0;
}
