// The tensor-core forward (flash_attention.cu's flash_forward, bf16, on the emulation's stand-ins of cp.async, ldmatrix and
// mma.sync) against a double reference over the bf16 inputs: heads of 256 (the instantiation with key tiles of 32 rows and
// Q's fragments read from shared memory at every key block: Gemma 2 2B/9B, Gemma 3) and of 64 (the training kernel as
// before), with and without Gemma 2's soft cap, with a sliding window, and over a cache (queries at device-side starts,
// fewer queries than keys). Inputs are uniform in (-2, 2), so at D = 256 and scale 1/16 the scores reach about +-4 and a
// cap of 1 bends most of them. Query counts that end inside a 64-row tile and key counts inside a 32-key tile exercise the
// zero-filled rows and the masks. Then serving's paged prefill on the same tile (run_paged). Prints one line per check; the
// exit code is the number of failures. kernels.h is written by the test: the emulation, common.cuh, flash_attention.cu.
#include "kernels.h"
#include "paged_pool.h"
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

// Serving's chunked prefill on the same tile (paged_prefill_bf16_d<D>): sequences of rows[b] new queries at positions
// lengths[b] - rows[b] .. lengths[b] - 1, flattened into one (N, H, D) batch, their keys and values read through a shuffled
// block table of 16-row blocks in a pool of (slot, 2 K, D) rows (K's heads, then V's), with a sliding window or none.
// Sequences shorter than min_rows are the decode kernels' and must be left as they were. Each sequence against the double
// reference as a batch of one (its queries at its own positions).
static void run_paged(const std::vector<int>& rows, const std::vector<int>& lengths, int D, int window, int min_rows,
                      EmuKv code = EmuKv::None)
{
    const int B = (int)rows.size(), H = 4, K = 2;
    std::mt19937 rng(17 + B * 7 + D + window + min_rows);
    std::uniform_real_distribution<float> u(-2, 2);
    std::vector<int> starts(B + 1, 0);
    for (int b = 0; b < B; b++) starts[b + 1] = starts[b] + rows[b];
    const int N = starts[B];
    const EmuPagedPool kv = make_paged_pool(lengths, K, D, code, rng, [&] { return u(rng) / 2; });
    const auto& pool = kv.pool;
    const auto& tables = kv.tables;
    const int max_blocks = kv.max_blocks;
    const long long stride = kv.stride;
    // Over a quantized pool (paged_prefill_i8 / _f8) the reference reads the dequantized rows, so the check is of the
    // kernel's dequantization and tile, not of the format's error.
    std::vector<bf16> q((size_t)N * H * D), out((size_t)N * H * D, from_f<bf16>(7.f));
    for (auto& e : q) e = from_f<bf16>(u(rng));
    const float scale = 1.f / std::sqrt((float)D);
    auto slot = [&](int b, int pos) { return kv.slot(b, pos); };

    emu_shared_base = smem;
    const int *pt = tables.data(), *pst = starts.data(), *pl = lengths.data();
    int b_ = B, h_ = H, k_ = K, bs = kv.block_size, mb = max_blocks, mr = min_rows, win = window > 0 ? window : 1 << 30;
    i64 qn = (i64)H * D, qh = D;
    float sc = scale;
    const unsigned tiles = (unsigned)((N + 63) / 64 + std::min(B, N / min_rows));   // as the host sizes the grid: an upper bound
    auto launch = [&](auto kernel) {
        emu_launch(dim3{tiles, (unsigned)H, 1}, 128, [&] { kernel(q.data(), pool.data(), out.data(), pt, pst, pl, b_, h_, k_, bs, mb, qn, qh, sc, mr, win); });
    };
    const signed char* p8 = reinterpret_cast<const signed char*>(kv.codes.data());   // the pool's bytes as int8 values
    const unsigned char* pf8 = kv.codes.data();                                     // or as E4M3 codes
    const float* ps8 = kv.scales.data();
    auto launch8 = [&](auto kernel, auto codes) {
        emu_launch(dim3{tiles, (unsigned)H, 1}, 128, [&] { kernel(q.data(), codes, out.data(), pt, pst, pl, b_, h_, k_, bs, mb, qn, qh, sc, mr, win, ps8); });
    };
    // (heads of 256 take the generic paged kernel: there is no paged_prefill at 256)
    if (code == EmuKv::Int8) D == 64 ? launch8(paged_prefill_i8_bf16_d64, p8) : launch8(paged_prefill_i8_bf16_d128, p8);
    else if (code == EmuKv::Fp8) D == 64 ? launch8(paged_prefill_f8_bf16_d64, pf8) : launch8(paged_prefill_f8_bf16_d128, pf8);
    else if (D == 64) launch(paged_prefill_bf16_d64);
    else launch(paged_prefill_bf16_d128);

    std::vector<double> e_rows;
    std::vector<float> g_rows;
    bool untouched = true;
    for (int b = 0; b < B; b++)
    {
        if (rows[b] < min_rows)
        {
            for (size_t i = (size_t)starts[b] * H * D; i < (size_t)starts[b + 1] * H * D; i++) untouched &= to_f(out[i]) == 7.f;
            continue;
        }
        const int n0 = starts[b];
        auto qa = [&](int, int t, int h, int d) { return (double)to_f(q[((size_t)(n0 + t) * H + h) * D + d]); };
        auto ka = [&](int, int j, int g, int d) { return (double)to_f(pool[slot(b, j) * stride + (size_t)g * D + d]); };
        auto va = [&](int, int j, int g, int d) { return (double)to_f(pool[slot(b, j) * stride + (size_t)(K + g) * D + d]); };
        std::vector<double> eo, elog;
        reference_attention(1, rows[b], H, K, D, std::vector<int>{lengths[b] - rows[b]}, window, scale, 0.0, qa, ka, va, eo, elog,
                            [](int, int, int, int, int, const std::vector<double>&, const std::vector<double>&) {});
        e_rows.insert(e_rows.end(), eo.begin(), eo.end());
        for (size_t i = (size_t)n0 * H * D; i < (size_t)starts[b + 1] * H * D; i++) g_rows.push_back(to_f(out[i]));
    }
    char name[160];
    snprintf(name, sizeof name, "paged_prefill D=%d B=%d N=%d window=%d%s", D, B, N, window, emu_kv_name(code));
    // The dense forward's bound (above): bf16 output and bf16 softmax weights, 1.2e-2; a wrong table entry, block, window
    // edge or sequence is O(1e-1) or more.
    check((std::string(name) + " output").c_str(), e_rows, g_rows, 1.2e-2);
    printf("%-72s %s\n", (std::string(name) + " short sequences untouched").c_str(), untouched ? "ok" : "FAIL");
    if (!untouched) failures++;
}

int main()
{
    run(256, 70, 70, 0, 1.f, false);     // Gemma 2 2B: heads of 256, capped; 70 queries: two query tiles, the second mostly empty
    run(256, 70, 70, 0, 0.f, false);     // Gemma 3: heads of 256, no cap
    run(256, 45, 100, 24, 1.f, true);    // a prefill chunk over a cache, a window of 24, capped
    run(64, 70, 70, 0, 1.f, false);      // the cap at head size 64 (the tile as training runs it)
    run(64, 37, 90, 0, 0.f, true);       // the head-size-64 kernel as before, over a cache
    // Paged prefill: chunks after cached context, a sequence below min_rows left alone, tiles across sequences, key blocks
    // left of a window neither loaded nor looked up
    run_paged({100, 3, 70, 200}, {300, 40, 70, 260}, 64, 0, 8);
    run_paged({100, 3, 70, 200}, {300, 40, 70, 260}, 64, 48, 8);
    run_paged({130, 65}, {130, 200}, 128, 0, 8);
    run_paged({45, 70}, {100, 150}, 128, 24, 8);
    for (EmuKv code : {EmuKv::Int8, EmuKv::Fp8})   // the same over int8 and fp8 pools
    {
        run_paged({100, 3, 70, 200}, {300, 40, 70, 260}, 64, 48, 8, code);
        run_paged({130, 65}, {130, 200}, 128, 0, 8, code);
    }
    printf("%s\n", failures ? "FAILURES" : "all ok");
    return failures;
}
