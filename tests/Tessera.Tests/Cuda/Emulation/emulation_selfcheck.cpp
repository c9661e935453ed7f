// The emulation's own checks (cuda_emulation.h), so that a kernel check can trust them: the threads of a block meet at
// barriers and shuffles and keep their own indices across switches; a cluster's CTAs read each other's shared memory
// between cluster barriers; a read without the barrier that orders it sees the value from before the write, for some
// thread; and, each in a run of its own (the argument), a barrier that one thread never reaches and a read of a cluster
// peer's shared memory after that peer has left abort with their messages (KernelEmulationTests checks the exit and the
// message). Prints one line per check; the exit code is the number of failures.
#include "kernels.h"
#include "emulation_check.h"
#include <cstring>
#include <vector>

static void check(const char* what, bool ok)
{
    printf("%s %s\n", what, ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

int main(int argc, char** argv)
{
    const char* mode = argc > 1 ? argv[1] : "";
    if (!std::strcmp(mode, "deadlock"))
    {
        printf("a thread that returns before a barrier the others wait at:\n");
        fflush(stdout);
        emu_launch(1, 64, [&] { if (threadIdx.x == 5) return; __syncthreads(); });
        printf("not caught FAIL\n");
        return 1;
    }
    if (!std::strcmp(mode, "early-leave"))
    {
        printf("a CTA that leaves while its peer still reads its shared memory:\n");
        fflush(stdout);
        emu_launch_cluster(2, 2, 32, [&] {
            float* mine = emu_block_shared_floats(64);
            mine[threadIdx.x] = (float)emu_cluster_rank();
            emu_cluster_arrive();
            emu_cluster_wait();
            float a, b;
            emu_cluster_load2(mine, 1 - emu_cluster_rank(), a, b);   // no cluster barrier before leaving
        });
        printf("not caught FAIL\n");
        return 1;
    }

    // Shuffles and block barriers, two blocks of 64 in turn.
    {
        static float shared[64];
        std::vector<float> out(128, -1.f);
        emu_launch(2, 64, [&] {
            shared[threadIdx.x] = (float)(blockIdx.x * 100 + threadIdx.x);
            __syncthreads();
            const float v = __shfl_xor_sync(0xffffffffu, shared[63 - threadIdx.x], 1);
            out[blockIdx.x * 64 + threadIdx.x] = v;
        });
        bool ok = true;
        for (int b = 0; b < 2; b++)
            for (int t = 0; t < 64; t++) ok &= out[b * 64 + t] == (float)(b * 100 + 63 - (t ^ 1));
        check("shuffles and block barriers", ok);
    }
    // Each thread's indices and its own variables survive the switches at every barrier.
    {
        std::vector<int> seen(256, -1);
        emu_launch(dim3{2, 2, 1}, 64, [&] {
            const unsigned mine = threadIdx.x;
            for (int i = 0; i < 5; i++) { __syncthreads(); __syncwarp(); }
            if (threadIdx.x == mine) seen[(blockIdx.y * 2 + blockIdx.x) * 64 + threadIdx.x] = (int)(blockIdx.y * 2 + blockIdx.x);
        });
        bool ok = true;
        for (int i = 0; i < 256; i++) ok &= seen[i] == i / 64;
        check("thread and block indices across switches", ok);
    }
    // A cluster of 3 CTAs: each writes its rank, and after the cluster barrier reads all three.
    {
        std::vector<float> sums(6 * 32, -1.f);
        emu_launch_cluster(6, 3, 32, [&] {
            float* mine = emu_block_shared_floats(64);
            mine[2 * threadIdx.x] = (float)blockIdx.x;
            mine[2 * threadIdx.x + 1] = (float)threadIdx.x;
            emu_cluster_arrive();
            emu_cluster_wait();
            float total = 0;
            for (unsigned r = 0; r < 3; r++)
            {
                float a, b;
                emu_cluster_load2(mine + 2 * threadIdx.x, r, a, b);
                total += a + b;
            }
            emu_cluster_arrive();
            emu_cluster_wait();
            sums[blockIdx.x * 32 + threadIdx.x] = total;
        });
        bool ok = true;
        for (int c = 0; c < 6; c++)
            for (int t = 0; t < 32; t++)
            {
                const int first = c / 3 * 3;
                ok &= sums[c * 32 + t] == (float)(first + first + 1 + first + 2 + 3 * t);
            }
        check("cluster loads between cluster barriers", ok);
    }
    // Without the barrier between a write and another thread's read, some thread reads the value from before the write.
    {
        static float shared[64];
        std::vector<float> got(64);
        emu_launch(1, 64, [&] {
            shared[threadIdx.x] = -1.f;
            __syncthreads();
            if (threadIdx.x >= 32) { __syncwarp(); __syncwarp(); }   // the second warp comes later, as it may on the GPU
            shared[threadIdx.x] = (float)threadIdx.x;
            __syncwarp();   // only the warp meets here: warps are not ordered against each other
            got[threadIdx.x] = shared[(threadIdx.x + 32) % 64];
        });
        int stale = 0;
        for (int t = 0; t < 64; t++) stale += got[t] == -1.f;
        check("a read across warps without the block barrier sees a stale value", stale > 0);
    }
    if (failures == 0) printf("all ok\n");
    return failures;
}
