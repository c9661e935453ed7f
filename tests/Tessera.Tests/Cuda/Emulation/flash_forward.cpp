// The tensor-core forward (flash_attention.cu's flash_forward, bf16, on the emulation's stand-ins of cp.async, ldmatrix and
// mma.sync) against a double reference over the bf16 inputs: heads of 256 (the instantiation with key tiles of 32 rows and
// Q's fragments read from shared memory at every key block: Gemma 2 2B/9B, Gemma 3) and of 64 (the training kernel as
// before), with and without Gemma 2's soft cap, with a sliding window, and over a cache (queries at device-side starts,
// fewer queries than keys). Inputs are uniform in (-2, 2), so at D = 256 and scale 1/16 the scores reach about +-4 and a
// cap of 1 bends most of them. Query counts that end inside a 64-row tile and key counts inside a 32-key tile exercise the
// zero-filled rows and the masks. Prints one line per check; the exit code is the number of failures. kernels.h is written
// by the test: the emulation, common.cuh, flash_attention.cu.
#include "kernels.h"
#include "attention_reference.h"
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

alignas(128) unsigned char smem[1 << 17];   // the kernels' dynamic shared memory: 96 KB at D = 256 (Q, two stages of K and V)
float pre_sums[1 << 14];                    // flash_backward_pre_sums's (unused here)
// B sequences of T queries over S keys (H query heads, K kv heads, contiguous (B, T, H, D) and (B, S, K, D)); without a
// cache query t sits at S - T + t, with one sequence b's queries at starts[b] + t over its starts[b] + T keys.
static void run(int D, int T, int S, int window, float cap, bool cached)
{
    const int B = 2, H = 4, K = 2;
    std::mt19937 rng(9 + D + T * 3 + S + window + (int)(cap * 7) + cached);
    std::uniform_real_distribution<float> u(-2, 2);
    std::vector<bf16> q((size_t)B * T * H * D), k((size_t)B * S * K * D), v(k.size());
    for (auto& x : q) x = from_f<bf16>(u(rng));
    for (auto& x : k) x = from_f<bf16>(u(rng));
    for (auto& x : v) x = from_f<bf16>(u(rng) / 2);
    std::vector<int> starts = {cached ? (S - T) / 3 : S - T, S - T};
    const float scale = 1.f / std::sqrt((float)D);
    const int kernel_window = window > 0 ? window : 1 << 30;

    std::vector<double> eo, elog;
    reference_attention(B, T, S, H, K, D, starts, window, scale, cap, q, k, v, eo, elog);

    std::vector<bf16> o(q.size(), from_f<bf16>(NAN));
    std::vector<float> lse(elog.size(), NAN);
    Strides3 qs{(i64)T * H * D, (i64)H * D, D}, ks{(i64)S * K * D, (i64)K * D, D};
    const int* pst = cached ? starts.data() : nullptr;
    emu_shared_base = smem;
    dim3 grid{(unsigned)((T + 63) / 64), (unsigned)H, (unsigned)B};
    auto launch = [&](auto kernel) {
        emu_launch(grid, 128, [&] { kernel(q.data(), k.data(), v.data(), o.data(), lse.data(), T, S, H, K, qs, ks, ks, qs, scale, pst, kernel_window, cap); });
    };
    if (D == 64) launch(flash_forward_bf16_d64); else launch(flash_forward_bf16_d256);
    std::vector<float> of(o.size());
    for (size_t i = 0; i < o.size(); i++) of[i] = to_f(o[i]);
    char name[160];
    snprintf(name, sizeof name, "flash_forward D=%d T=%d S=%d window=%d cap=%g%s", D, T, S, window, cap, cached ? " cached" : "");
    std::string base = name;
    // bf16 output: rounding to 8 significant bits is up to 2^-8 of a value's binade (3.9e-3 of the largest); the kernel
    // also rounds the softmax weights to bf16 before the product with V (2^-9 relative each), as FlashAttention-2 does:
    // 1.2e-2. lse in f32 from f32 sums: 1e-5. A wrong key, tile, mask or a missing cap is O(1e-1) or more.
    check((base + " output").c_str(), eo, of, 1.2e-2);
    check((base + " lse").c_str(), elog, lse, 1e-5);
}

int main()
{
    run(256, 70, 70, 0, 1.f, false);     // Gemma 2 2B: heads of 256, capped; 70 queries: two query tiles, the second mostly empty
    run(256, 70, 70, 0, 0.f, false);     // Gemma 3: heads of 256, no cap
    run(256, 45, 100, 24, 1.f, true);    // a prefill chunk over a cache, a window of 24, capped
    run(64, 70, 70, 0, 1.f, false);      // the cap at head size 64 (the tile as training runs it)
    run(64, 37, 90, 0, 0.f, true);       // the head-size-64 kernel as before, over a cache
    printf("%s\n", failures ? "FAILURES" : "all ok");
    return failures;
}
