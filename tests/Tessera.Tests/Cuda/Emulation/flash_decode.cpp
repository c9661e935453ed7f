// The per-query-head split decode (flash_attention.cu's flash_decode, bf16) on the CPU emulation of CUDA, against a double
// reference over the bf16 inputs: queries at device-side positions over a cache (each sequence its own length), keys split
// over CTAs, merged by the last CTA of each (b, h) (counters) or by flash_decode_combine; head sizes 64 and 256 (the one
// kernel of the file instantiated at 256: Gemma 2 2B/9B, Gemma 3), with and without Gemma 2's soft cap, with a sliding
// window. Inputs are uniform in (-2, 2): at D = 256 and scale 1/16 the scores reach about +-4, so a cap of 1 bends most of
// them. Prints one line per check; the exit code is the number of failures. kernels.h is written by the test: the
// emulation, common.cuh, flash_attention.cu.
#include "kernels.h"
#include "attention_reference.h"
#include <cmath>
#include <cstring>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

unsigned char smem[1 << 18];        // the kernels' dynamic shared memory (flash_decode_out's weights; the others use none here)
float pre_sums[1 << 14];            // flash_backward_pre_sums's (unused here)
// B sequences of T new queries over a cache of S positions (H query heads, K kv heads, contiguous (B, T, H, D) and
// (B, S, K, D)); sequence b's queries sit at starts[b] .. starts[b] + T - 1.
static void run(int D, int T, int window, float cap, int splits, bool counters)
{
    const int B = 2, H = 4, K = 2, S = 300;
    std::mt19937 rng(5 + D + T * 3 + window + (int)(cap * 7) + splits + counters);
    std::uniform_real_distribution<float> u(-2, 2);
    std::vector<bf16> q((size_t)B * T * H * D), k((size_t)B * S * K * D), v(k.size());
    for (auto& x : q) x = from_f<bf16>(u(rng));
    for (auto& x : k) x = from_f<bf16>(u(rng));
    for (auto& x : v) x = from_f<bf16>(u(rng) / 2);
    const std::vector<int> starts = {97, S - T};
    const float scale = 1.f / std::sqrt((float)D);
    const int kernel_window = window > 0 ? window : 1 << 30;

    std::vector<double> eo, elog;
    reference_attention(B, T, S, H, K, D, starts, window, scale, cap, q, k, v, eo, elog);

    std::vector<float> part((size_t)B * H * T * splits * (D + 2), NAN), lse(elog.size(), NAN);
    std::vector<bf16> o(q.size(), from_f<bf16>(NAN));
    std::vector<int> count((size_t)B * H, 0), st(starts);
    Strides3 qs{(i64)T * H * D, (i64)H * D, D}, ks{(i64)S * K * D, (i64)K * D, D};
    int* pc = counters ? count.data() : nullptr;
    auto launch = [&](auto kernel) {
        emu_launch(dim3{(unsigned)splits, (unsigned)H, (unsigned)B}, 128, [&] {
            kernel(q.data(), k.data(), v.data(), part.data(), T, S, H, K, qs, ks, ks, scale, 0, st.data(), pc, o.data(), lse.data(), qs,
                   kernel_window, cap);
        });
    };
    if (D == 64) launch(flash_decode_bf16_d64); else launch(flash_decode_bf16_d256);
    if (!counters)
    {
        if (D == 64) emu_launch((unsigned)(B * H * T), (unsigned)D, [&] { flash_decode_combine_bf16_d64(part.data(), o.data(), lse.data(), T, H, splits, qs); });
        else emu_launch((unsigned)(B * H * T), (unsigned)D, [&] { flash_decode_combine_bf16_d256(part.data(), o.data(), lse.data(), T, H, splits, qs); });
    }
    std::vector<float> of(o.size());
    for (size_t i = 0; i < o.size(); i++) of[i] = to_f(o[i]);
    char name[160];
    snprintf(name, sizeof name, "flash_decode D=%d T=%d window=%d cap=%g splits=%d %s", D, T, window, cap, splits,
             counters ? "last CTA merges" : "combine kernel");
    std::string base = name;
    // bf16 output: rounding to 8 significant bits is up to 2^-8 of a value's binade (3.9e-3 of the largest); 8e-3 leaves
    // margin for the f32 sums. lse in f32: 1e-5. A wrong key, split, head or a missing cap is O(1e-1) or more.
    check((base + " output").c_str(), eo, of, 8e-3);
    check((base + " lse").c_str(), elog, lse, 1e-5);
    bool zero = true;
    for (int c : count) zero &= c == 0;
    if (!zero) { printf("%s: counters not reset FAIL\n", name); failures++; }
}

// The decode attention with the output product behind it (flash_decode_out, bf16): y (B, ldy) += Wo (C, H D) o + bias for
// one query a sequence at device-side positions, against a double reference: the attention of reference_attention rounded
// to bf16 (as AttentionForwardCached stores it), then the product and the add in double. The CTA grid is (segments of
// `rows` output rows, K, B) in clusters along the segments; Wo's and y's rows are padded past their ends (the padding must
// stay as it was). The kernel's
// weights copied before or after the wait must give the same bits, and the counters must be left zero.
static void run_out(int B, int H, int K, int D, int C, int rows, int window, bool bias, const std::vector<int>& starts, int ctas)
{
    const int S = 700, ldo = H * D + 8, ldy = C + 4;
    emu_shared_base = smem;   // cp.async's shared-space addresses are offsets into the kernel's dynamic shared memory
    std::mt19937 rng(17 + B + H * 3 + K + D + C + rows + window + bias);
    std::uniform_real_distribution<float> u(-2, 2);
    std::vector<bf16> q((size_t)B * H * D), k((size_t)B * S * K * D), v(k.size()), wo((size_t)C * ldo), bv(C), y0((size_t)B * ldy);
    for (auto& x : q) x = from_f<bf16>(u(rng));
    for (auto& x : k) x = from_f<bf16>(u(rng));
    for (auto& x : v) x = from_f<bf16>(u(rng) / 2);
    for (auto& x : wo) x = from_f<bf16>(u(rng) / 8);
    for (auto& x : bv) x = from_f<bf16>(u(rng));
    for (auto& x : y0) x = from_f<bf16>(u(rng));
    const float scale = 1.f / std::sqrt((float)D);
    std::vector<double> eo, elog;
    reference_attention(B, 1, S, H, K, D, starts, window, scale, 0.0, q, k, v, eo, elog);
    std::vector<double> ey((size_t)B * C);
    for (int b = 0; b < B; b++)
        for (int n = 0; n < C; n++)
        {
            double sum = to_f(y0[(size_t)b * ldy + n]) + (bias ? to_f(bv[n]) : 0.0);
            for (int c = 0; c < H * D; c++) sum += (double)to_f(wo[(size_t)n * ldo + c]) * to_f(from_f<bf16>((float)eo[(size_t)b * H * D + c]));
            ey[(size_t)b * C + n] = sum;
        }
    // As the host pads them once it knows the rows: the segments in clusters of `ctas` (fewer for a short output), padded
    // to a whole cluster.
    const int cluster = std::min(ctas, (C + rows - 1) / rows), segments = ((C + rows - 1) / rows + cluster - 1) / cluster * cluster;
    std::vector<float> part((size_t)B * K * C, NAN);
    std::vector<int> count((size_t)B * segments, 0), st(starts);
    Strides3 qs{(i64)H * D, (i64)H * D, D}, ks{(i64)S * K * D, (i64)K * D, D};
    const int kernel_window = window > 0 ? window : 1 << 30;
    std::vector<bf16> results[2];
    for (int early = 0; early < 2; early++)
    {
        std::vector<bf16> y(y0);
        auto launch = [&](auto kernel) {
            emu_launch_cluster(dim3{(unsigned)segments, (unsigned)K, (unsigned)B}, (unsigned)cluster, 256, [&] {
                kernel(q.data(), k.data(), v.data(), st.data(), S, wo.data(), bias ? bv.data() : nullptr, y.data(), part.data(), count.data(),
                       H, K, C, rows, qs, ks, ks, (i64)ldo, (i64)ldy, scale, kernel_window, early);
            });
        };
        if (D == 64) launch(flash_decode_out_bf16_d64); else launch(flash_decode_out_bf16_d128);
        results[early] = y;
    }
    std::vector<float> got((size_t)B * C);
    bool pads = true;
    for (int b = 0; b < B; b++)
    {
        for (int n = 0; n < C; n++) got[(size_t)b * C + n] = to_f(results[1][(size_t)b * ldy + n]);
        for (int n = C; n < ldy; n++) pads &= to_f(results[1][(size_t)b * ldy + n]) == to_f(y0[(size_t)b * ldy + n]);
    }
    char name[160];
    snprintf(name, sizeof name, "flash_decode_out B=%d H=%d K=%d D=%d C=%d rows=%d window=%d bias=%d ctas=%d", B, H, K, D, C, rows, window, bias, cluster);
    // bf16 output: a rounding is up to 2^-8 of a value's binade (3.9e-3 of the largest); 8e-3 leaves margin for the f32
    // sums and for attention outputs rounded to bf16 the other way where the f32 and double values straddle a midpoint. A
    // wrong key, head, weight column, row or segment is O(1e-1) or more.
    check(name, ey, got, 8e-3);
    bool same = true;
    for (size_t i = 0; i < results[0].size(); i++) same &= std::memcmp(&results[0][i], &results[1][i], sizeof(bf16)) == 0;
    printf("%-72s %s\n", (std::string(name) + ": early = late, pads, counters").c_str(), same && pads ? "ok" : "FAIL");
    bool zero = true;
    for (int c : count) zero &= c == 0;
    if (!same || !pads || !zero) failures++;
    if (!zero) printf("%s: counters not reset FAIL\n", name);
}

int main()
{
    run(256, 1, 0, 1.f, 4, true);     // Gemma 2 2B decoding: capped, heads of 256, four splits merged by the last CTA
    run(256, 1, 0, 0.f, 4, true);     // Gemma 3: heads of 256, no cap
    run(256, 3, 40, 1.f, 3, false);   // three queries a sequence, a window of 40, the combine kernel
    run(64, 1, 0, 1.f, 5, true);      // the cap at head size 64 (Gemma 2 shapes narrower than the released ones)
    run(64, 2, 0, 0.f, 2, false);     // the kernel as before: no cap
    // llama's grouping (4 heads a kv head), 7 segments (the last of 4 rows) padded to 8 in clusters of 4, so a segment
    // without rows still shares its cluster's attention; each rank a quarter of 98 or 300 keys
    run_out(2, 8, 2, 64, 100, 16, 0, true, {97, 299}, 4);
    run_out(1, 4, 1, 128, 72, 32, 50, false, {200}, 4);  // heads of 128, one kv head, a window of 50 over a cluster of 3
    run_out(1, 6, 2, 64, 40, 8, 0, true, {40}, 8);       // 3 heads a kv head (24 chunks a row: idle lanes); 41 keys over a cluster of 5 (9 a rank)
    run_out(1, 16, 2, 64, 64, 64, 0, false, {600}, 4);   // 8 heads a kv head (the most); one segment: a cluster of 1, each warp three chunks of keys
    run_out(1, 8, 2, 64, 256, 32, 0, false, {650}, 2);   // clusters of 2, ranks of 326 keys (two chunks for three warps)
    run_out(1, 8, 2, 64, 40, 8, 0, false, {2}, 4);       // 3 keys over a cluster of 4: the last rank has none; 3 pad segments
    printf("%s\n", failures ? "FAILURES" : "all ok");
    return failures;
}
