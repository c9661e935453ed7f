// Serving's paged attention kernels (paged_attention.cu) in their f32 instantiation on the CPU emulation of CUDA
// (cuda_emulation.h), against a double reference: the vectorized paged_decode (head sizes 64 and 128, query-head groups
// of 1, 3 and 4 in registers of 1 and 4), with and without a key split merged by paged_attention_combine or, with counters,
// by the kernel's last CTA per row and head group (which must leave the counters at zero), skipping the rows
// of sequences longer than max_rows (left to the tensor-core prefill kernel: their output must stay untouched; the grid then
// covers only the other rows, found by a prefix sum over the sequences, with CTAs to spare); and the
// generic paged_attention as a check of the harness. The batch mixes decode rows, a padding row (no keys), a short
// prefill and a longer one, over blocks of 16 scattered in a shuffled pool. With a sliding window, the blocks wholly left of
// every row's window point at a block of NaNs (as if returned to the pool and overwritten): reading one would poison the
// output. Prints one line per check; the exit code is the
// number of failures. The tiled decode kernel (paged_decode_tiled) runs the same checks, also in bf16 (inputs rounded to
// bf16 before the reference sees them), and so does the tensor-core decode kernel (paged_decode_mma, bf16, on the
// emulation's stand-ins of cp.async, ldmatrix and mma.sync). kernels.h is written by the test: the emulation, common.cuh,
// paged_attention.cu.
#include "kernels.h"
#include "emulation_check.h"
#include <algorithm>
#include <random>

float pa_shared[1 << 14];   // the kernels' dynamic shared memory (extern __shared__)
float pd_shared[1 << 15];   // 128 KB: paged_decode_mma's K/V tiles in flight (96 KB at D = 128), then its staged table

// Tolerance: f32 dot products of 64-128 terms, exp2 and online rescaling against double: ~1e-6 relative; 1e-5 leaves
// margin, and a wrong key, position, head or split is O(1).
static void check(const char* what, const std::vector<double>& e, const std::vector<float>& a, const std::vector<char>& computed, double tol)
{
    bool untouched = true;
    for (size_t i = 0; i < e.size(); i++)
        if (!computed[i]) untouched &= a[i] == (float)e[i];
    // A written skipped row fails the line however small its error: the error reported is then infinite.
    const double rel = errors_of(e.data(), a.data(), e.size(), computed.data()).relative();
    report_error(what, 56, untouched ? rel : INFINITY, tol, "rel err", untouched ? "" : ", a skipped row was written");
}

// paged_append_i8 and paged_append_f8 (f32 and bf16 rows, D = 64 and 40, a head of zeros, a head of negative zeros, a head
// with a NaN, a head whose magnitudes span 1e-6 to 3 (E4M3's subnormals), padding rows) against emu_quantize_kv_row, bit for
// bit: the same fp32 operations (the E4M3 codes by a search over every code). Slots not written keep their poison.
static void append_q(EmuKv code)
{
    for (int D : {64, 40})
        for (bool bf16_rows : {false, true})
        {
            const int N = 7, R = 4, slots_total = 32;
            std::mt19937 rng(5 + D + bf16_rows);
            std::uniform_real_distribution<float> u(-3, 3), e(0, 6);
            std::vector<float> kv((size_t)N * R * D);
            for (auto& x : kv) x = u(rng);
            for (int d = 0; d < D; d++) kv[(size_t)(1 * R + 2) * D + d] = 0.f;   // row 1, head 2: zeros
            for (int d = 0; d < D; d++) kv[(size_t)(1 * R + 3) * D + d] = -0.f;  // row 1, head 3: negative zeros
            kv[(size_t)(3 * R + 1) * D + 5] = NAN;                              // row 3, head 1: not finite
            for (int d = 0; d < D; d++)                                         // row 4, head 0: 3 down to 3e-6
                kv[(size_t)(4 * R) * D + d] = (d & 1 ? -3.f : 3.f) * std::pow(10.f, -e(rng));
            if (bf16_rows) for (auto& x : kv) x = to_f(from_f<bf16>(x));
            std::vector<int> slots = {9, -1, 3, 30, 0, -1, 17};
            slots[1] = 12;                                                      // row 1 (its zero heads) is written
            std::vector<unsigned char> pool((size_t)slots_total * R * D, 99);
            std::vector<float> scales((size_t)slots_total * R, -5.f);
            std::vector<bf16> kv16(kv.size());
            for (size_t i = 0; i < kv.size(); i++) kv16[i] = from_f<bf16>(kv[i]);
            float* ps = scales.data();
            const int* sl = slots.data();
            const long long kv_n = (long long)R * D, kv_r = D;
            const bf16* k16 = kv16.data();
            const float* k32 = kv.data();
            if (code == EmuKv::Int8)
            {
                signed char* pp = reinterpret_cast<signed char*>(pool.data());
                if (bf16_rows) emu_launch(3, 64, [&] { paged_append_i8_bf16(k16, pp, ps, sl, N, R, D, kv_n, kv_r); });
                else emu_launch(3, 64, [&] { paged_append_i8_f32(k32, pp, ps, sl, N, R, D, kv_n, kv_r); });
            }
            else
            {
                unsigned char* pp = pool.data();
                if (bf16_rows) emu_launch(3, 64, [&] { paged_append_f8_bf16(k16, pp, ps, sl, N, R, D, kv_n, kv_r); });
                else emu_launch(3, 64, [&] { paged_append_f8_f32(k32, pp, ps, sl, N, R, D, kv_n, kv_r); });
            }
            bool ok = true;
            std::vector<char> written(slots_total, 0);
            std::vector<unsigned char> q(D);
            int subnormal = 0;
            for (int n = 0; n < N; n++)
            {
                if (slots[n] < 0) continue;
                written[slots[n]] = 1;
                for (int r = 0; r < R; r++)
                {
                    const float s = emu_quantize_kv_row(code, &kv[(size_t)(n * R + r) * D], q.data(), D);
                    const float got = scales[(size_t)slots[n] * R + r];
                    ok &= std::isnan(s) ? std::isnan(got) : got == s;
                    ok &= std::memcmp(q.data(), &pool[((size_t)slots[n] * R + r) * D], D) == 0;
                    for (int d = 0; d < D; d++) subnormal += code == EmuKv::Fp8 && q[d] != 0 && (q[d] & 0x78) == 0;
                }
            }
            ok &= scales[(size_t)12 * R + 2] == 0.f && scales[(size_t)12 * R + 3] == 0.f;   // both zero heads: scale 0, +0 codes
            for (int d = 0; d < D; d++) ok &= pool[((size_t)12 * R + 3) * D + d] == 0;
            ok &= code != EmuKv::Fp8 || subnormal > 0;                                      // the wide head reached the subnormals
            for (int sl2 = 0; sl2 < slots_total; sl2++)
                if (!written[sl2]) ok &= scales[(size_t)sl2 * R] == -5.f && pool[(size_t)sl2 * R * D] == 99;
            printf("paged_append_%s %s D=%d = quantize_row bit for bit %s\n", code == EmuKv::Int8 ? "i8" : "f8", bf16_rows ? "bf16" : "f32", D, ok ? "ok" : "FAIL");
            if (!ok) failures++;
        }
}

static void run(int H, int K, int D, int splits, int max_rows, bool generic, std::vector<int> rows = {1, 1, 1, 3, 10},
                std::vector<int> lengths = {37, 100, 0, 20, 10}, int window = 0, bool finish = false, int min_chunk = 1,
                bool compare_merges = false, bool tiled = false, bool bf16_inputs = false, bool mma = false, EmuKv code = EmuKv::None,
                float cap = 0)
{
    const int bs = 16;
    const int B = (int)rows.size();
    int N = 0;
    for (int r : rows) N += r;
    int max_blocks = 0, pool_blocks = 4;
    for (int l : lengths) { max_blocks = std::max(max_blocks, (l + bs - 1) / bs); pool_blocks += (l + bs - 1) / bs; }
    std::mt19937 rng(11 + H * 7 + D + splits);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<int> free_blocks(pool_blocks);
    for (int i = 0; i < pool_blocks; i++) free_blocks[i] = i;
    std::shuffle(free_blocks.begin(), free_blocks.end(), rng);
    std::vector<int> tables(B * max_blocks, 0), starts(B + 1, 0);
    const int nan_block = free_blocks.back();
    for (int b = 0, next = 0; b < B; b++)
    {
        // With a window, blocks wholly before the oldest key of the sequence's first row's window are gone.
        const int first = window > 0 ? std::max(0, lengths[b] - rows[b] - window + 1) : 0;
        for (int k = 0; k < (lengths[b] + bs - 1) / bs; k++) tables[b * max_blocks + k] = (k + 1) * bs <= first ? nan_block : free_blocks[next++];
        starts[b + 1] = starts[b] + rows[b];
    }
    const int R = H + 2 * K;
    std::vector<float> qkv((size_t)N * R * D), pool((size_t)pool_blocks * bs * 2 * K * D);
    for (auto& x : qkv) x = u(rng);
    for (auto& x : pool) x = u(rng);
    if (bf16_inputs)   // the reference sees the values the bf16 kernel reads
    {
        for (auto& x : qkv) x = to_f(from_f<bf16>(x));
        for (auto& x : pool) x = to_f(from_f<bf16>(x));
    }
    for (size_t i = (size_t)nan_block * bs * 2 * K * D; i < (size_t)(nan_block + 1) * bs * 2 * K * D; i++) pool[i] = NAN;
    // A quantized pool (int8 or fp8): each (slot, head) row quantized as the append does (emu_quantize_kv_row), and the
    // reference reads what the codes stand for, scale x value (in f32: a 24-bit scale times a code of at most 8 significant
    // bits rounds once, as the kernels' fp32 product does). The NaN block quantizes to a NaN scale and zeros: still NaN to
    // any kernel that reads it.
    const bool quantized = code != EmuKv::None;
    std::vector<unsigned char> codes(quantized ? pool.size() : 0);
    std::vector<float> scales(quantized ? pool.size() / D : 0);
    if (quantized)
        for (size_t row = 0; row < scales.size(); row++)
        {
            scales[row] = emu_quantize_kv_row(code, &pool[row * D], &codes[row * D], D);
            for (int d = 0; d < D; d++) pool[row * D + d] = scales[row] * emu_kv_value(code, codes[row * D + d]);
        }
    const float poison = 12288.f;   // exact in bf16, so an untouched bf16 output reads back as it
    std::vector<float> out((size_t)N * H * D, poison), partial((size_t)splits * N * H * (D + 2), NAN);
    const float scale = 1.f / std::sqrt((float)D);

    // Reference, and which outputs the kernels must write (mask 1) or leave alone (rows of sequences past max_rows).
    std::vector<double> expected(out.size(), poison);
    std::vector<char> mask(out.size(), 1);
    for (int b = 0; b < B; b++)
        for (int n = starts[b]; n < starts[b + 1]; n++)
        {
            const int pos = lengths[b] - rows[b] + (n - starts[b]);
            const int lo = window > 0 ? std::max(0, pos - window + 1) : 0;
            for (int h = 0; h < H; h++)
            {
                const int kvh = h / (H / K);
                std::vector<double> s(std::max(pos + 1, 0)), acc(D, 0.0);
                double big = -INFINITY, sum = 0;
                for (int j = lo; j <= pos; j++)
                {
                    const long long slot = (long long)tables[b * max_blocks + j / bs] * bs + j % bs;
                    double dot = 0;
                    for (int d = 0; d < D; d++) dot += (double)qkv[((size_t)n * R + h) * D + d] * pool[(slot * 2 * K + kvh) * D + d];
                    s[j] = cap > 0 ? cap * std::tanh(dot * scale / cap) : dot * scale;
                    big = std::max(big, s[j]);
                }
                for (int j = lo; j <= pos; j++)
                {
                    const long long slot = (long long)tables[b * max_blocks + j / bs] * bs + j % bs;
                    const double p = std::exp(s[j] - big);
                    sum += p;
                    for (int d = 0; d < D; d++) acc[d] += p * pool[(slot * 2 * K + K + kvh) * D + d];
                }
                for (int d = 0; d < D; d++)
                {
                    const size_t i = ((size_t)n * H + h) * D + d;
                    if (rows[b] > max_rows) { mask[i] = 0; expected[i] = poison; }
                    else expected[i] = pos < 0 ? 0.0 : acc[d] / sum;
                }
            }
        }

    // bf16 output: rounding to 8 significant bits costs up to 2^-8 of a value's binade (3.9e-3 of the largest output at
    // most); 8e-3 leaves margin for the f32 sums, and a wrong key, position, head or split is O(1). paged_decode_mma also
    // rounds the softmax weights to bf16 before the product with V (2^-9 relative each): 1.2e-2.
    const double tol = mma ? 1.2e-2 : bf16_inputs ? 8e-3 : 1e-5;
    const float* q = qkv.data();
    long long q_n = (long long)R * D, q_h = D;
    int G = H / K;
    const int* pt = tables.data(); const int* ps = starts.data(); const int* pl = lengths.data();
    float* po = out.data(); const float* pp = pool.data();
    // With max_rows < N the kernel's grid covers an upper bound of the rows it owns (here their count plus 3 to spare).
    int X = N;
    if (!generic && max_rows < N)
    {
        X = 3;
        for (int r : rows) X += r <= max_rows ? r : 0;
    }
    if (splits > 1) partial.assign((size_t)splits * X * H * (D + 2), NAN);
    float* pw = splits > 1 ? partial.data() : nullptr;
    dim3 grid{(unsigned)(generic ? N : X), (unsigned)(H / G), (unsigned)splits};
    char name[160];
    const int kernel_window = window > 0 ? window : 1 << 30;
    const signed char* p8 = reinterpret_cast<const signed char*>(codes.data());   // the pool's bytes as int8 values
    const unsigned char* pf8 = codes.data();                                       // or as E4M3 codes
    const float* sc8 = scales.data();
    if (generic)
    {
        if (code == EmuKv::Int8) emu_launch(grid, 128, [&] { paged_attention_i8_f32(q, p8, po, pw, pt, ps, pl, B, N, H, K, D, G, bs, max_blocks, q_n, q_h, scale, kernel_window, cap, sc8); });
        else if (code == EmuKv::Fp8) emu_launch(grid, 128, [&] { paged_attention_f8_f32(q, pf8, po, pw, pt, ps, pl, B, N, H, K, D, G, bs, max_blocks, q_n, q_h, scale, kernel_window, cap, sc8); });
        else emu_launch(grid, 128, [&] { paged_attention_f32(q, pp, po, pw, pt, ps, pl, B, N, H, K, D, G, bs, max_blocks, q_n, q_h, scale, kernel_window, cap); });
        snprintf(name, sizeof name, "paged_attention%s H=%d K=%d D=%d splits=%d window=%d%s", emu_kv_name(code), H, K, D, splits, window,
                 cap > 0 ? " capped" : "");
    }
    else
    {
        const int gm = G <= 1 ? 1 : G <= 2 ? 2 : G <= 4 ? 4 : 8;
        std::vector<int> counters((size_t)grid.x * grid.y, 0);
        int* pc = finish && splits > 1 ? counters.data() : nullptr;
        int batched = 1;
        auto launch = [&](auto kernel) { emu_launch(grid, 128, [&] { kernel(q, pp, po, pw, pc, pt, ps, pl, B, N, H, K, G, bs, max_blocks, q_n, q_h, scale, max_rows, kernel_window, min_chunk, batched); }); };
        // bf16 (the serving dtype: 8 lanes a key row at D = 64, 16 at 128): inputs and output converted around the launch.
        std::vector<bf16> q16(qkv.size()), pool16(pool.size()), out16(out.size());
        auto launch16 = [&](auto kernel) {
            for (size_t i = 0; i < qkv.size(); i++) q16[i] = from_f<bf16>(qkv[i]);
            for (size_t i = 0; i < pool.size(); i++) pool16[i] = from_f<bf16>(pool[i]);
            for (size_t i = 0; i < out.size(); i++) out16[i] = from_f<bf16>(out[i]);
            const bf16 *q6 = q16.data(), *p6 = pool16.data();
            bf16* o6 = out16.data();
            emu_launch(grid, 128, [&] { kernel(q6, p6, o6, pw, pc, pt, ps, pl, B, N, H, K, G, bs, max_blocks, q_n, q_h, scale, max_rows, kernel_window, min_chunk, batched); });
            if (splits > 1 && !pc)
                emu_launch(dim3{grid.x, (unsigned)H, 1}, 64, [&] { paged_attention_combine_bf16(pw, o6, splits, N, H, D, ps, B, max_rows); });
            for (size_t i = 0; i < out.size(); i++) out[i] = to_f(out16[i]);
        };
        // Over a quantized pool p8 (int8 values or E4M3 codes): the same kernels' _i8 or _f8 instantiations, the scales last.
        auto launch8 = [&](auto kernel, auto p8) { emu_launch(grid, 128, [&] { kernel(q, p8, po, pw, pc, pt, ps, pl, B, N, H, K, G, bs, max_blocks, q_n, q_h, scale, max_rows, kernel_window, min_chunk, batched, sc8); }); };
        auto launch16_8 = [&](auto kernel, auto p8) {
            for (size_t i = 0; i < qkv.size(); i++) q16[i] = from_f<bf16>(qkv[i]);
            for (size_t i = 0; i < out.size(); i++) out16[i] = from_f<bf16>(out[i]);
            const bf16* q6 = q16.data();
            bf16* o6 = out16.data();
            emu_launch(grid, 128, [&] { kernel(q6, p8, o6, pw, pc, pt, ps, pl, B, N, H, K, G, bs, max_blocks, q_n, q_h, scale, max_rows, kernel_window, min_chunk, batched, sc8); });
            if (splits > 1 && !pc)
                emu_launch(dim3{grid.x, (unsigned)H, 1}, 64, [&] { paged_attention_combine_bf16(pw, o6, splits, N, H, D, ps, B, max_rows); });
            for (size_t i = 0; i < out.size(); i++) out[i] = to_f(out16[i]);
        };
        // The instantiations of one code (i8 or f8) over its view of the pool's bytes.
#define DECODE_Q(c, p)                                                                                                    \
        [&] {                                                                                                             \
            emu_shared_base = (unsigned char*)pd_shared;                                                                  \
            if (mma && bf16_inputs && D == 64) launch16_8(paged_decode_mma_##c##_bf16_d64, p);                            \
            else if (mma && bf16_inputs && D == 128) launch16_8(paged_decode_mma_##c##_bf16_d128, p);                     \
            else if (mma) return false;                                                                                   \
            else if (tiled && bf16_inputs && D == 64 && gm == 4) launch16_8(paged_decode_tiled_##c##_bf16_d64_g4, p);     \
            else if (tiled && bf16_inputs && D == 128 && gm == 4) launch16_8(paged_decode_tiled_##c##_bf16_d128_g4, p);   \
            else if (tiled && !bf16_inputs && D == 64 && gm == 1) launch8(paged_decode_tiled_##c##_f32_d64_g1, p);        \
            else if (tiled) return false;                                                                                 \
            else if (bf16_inputs && D == 64 && gm == 4) launch16_8(paged_decode_##c##_bf16_d64_g4, p);                    \
            else if (!bf16_inputs && D == 64 && gm == 4) launch8(paged_decode_##c##_f32_d64_g4, p);                       \
            else if (!bf16_inputs && D == 64 && gm == 1) launch8(paged_decode_##c##_f32_d64_g1, p);                       \
            else if (!bf16_inputs && D == 128 && gm == 4) launch8(paged_decode_##c##_f32_d128_g4, p);                     \
            else return false;                                                                                            \
            return true;                                                                                                  \
        }
        auto decode8 = [&] { return code == EmuKv::Int8 ? DECODE_Q(i8, p8)() : DECODE_Q(f8, pf8)(); };
#undef DECODE_Q
        auto decode = [&] {
            if (quantized) return decode8();
            if (mma)   // bf16 only, any group of up to 8 (one kernel per head size)
            {
                emu_shared_base = (unsigned char*)pd_shared;
                if (!bf16_inputs || G > 8) return false;
                if (D == 64) launch16(paged_decode_mma_bf16_d64);
                else if (D == 128) launch16(paged_decode_mma_bf16_d128);
                else return false;
                return true;
            }
            if (tiled && bf16_inputs)
            {
                if (D == 64 && gm == 1) launch16(paged_decode_tiled_bf16_d64_g1);
                else if (D == 64 && gm == 4) launch16(paged_decode_tiled_bf16_d64_g4);
                else if (D == 64 && gm == 8) launch16(paged_decode_tiled_bf16_d64_g8);
                else if (D == 128 && gm == 4) launch16(paged_decode_tiled_bf16_d128_g4);
                else return false;
                return true;
            }
            if (tiled)
            {
                if (D == 64 && gm == 1) launch(paged_decode_tiled_f32_d64_g1);
                else if (D == 64 && gm == 4) launch(paged_decode_tiled_f32_d64_g4);
                else if (D == 64 && gm == 8) launch(paged_decode_tiled_f32_d64_g8);
                else if (D == 128 && gm == 4) launch(paged_decode_tiled_f32_d128_g4);
                else if (D == 128 && gm == 8) launch(paged_decode_tiled_f32_d128_g8);
                else return false;
                return true;
            }
            if (bf16_inputs) return false;
            if (D == 64 && gm == 1) launch(paged_decode_f32_d64_g1);
            else if (D == 64 && gm == 4) launch(paged_decode_f32_d64_g4);
            else if (D == 128 && gm == 4) launch(paged_decode_f32_d128_g4);
            else return false;
            return true;
        };
        if (!decode()) { printf("no instantiation for D=%d GM=%d\n", D, gm); failures++; return; }
        snprintf(name, sizeof name, "%s H=%d K=%d D=%d splits=%d max_rows=%d B=%d window=%d%s%s%s%s", mma ? "paged_decode_mma" : tiled ? "paged_decode_tiled" : "paged_decode",
                 H, K, D, splits, max_rows, B, window, pc ? " finish" : "", min_chunk > 1 ? " min_chunk" : "", bf16_inputs ? " bf16" : "", emu_kv_name(code));
        if (pc && compare_merges)
        {
            // The merge that loads each split behind its weight (PagedDecodeBatchedMerge=false) must give the batched merge's
            // output bit for bit: the same products summed in the same order.
            const std::vector<float> batched_out = out;
            std::fill(out.begin(), out.end(), poison);
            batched = 0;
            decode();
            const bool same = std::memcmp(out.data(), batched_out.data(), out.size() * sizeof(float)) == 0;
            printf("%s: serial merge = batched merge bit for bit %s\n", name, same ? "ok" : "FAIL");
            if (!same) failures++;
            out = batched_out;
        }
        if (mma)
        {
            // The block table staged in shared memory (flags bit 1, CudaBackendOptions.PagedDecodeStagedTable) must give the
            // same bits: the same rows from the same slots, looked up in the copy instead of the global table.
            const std::vector<float> global_out = out;
            std::fill(out.begin(), out.end(), poison);
            batched = 3;
            decode();
            batched = 1;
            const bool same = std::memcmp(out.data(), global_out.data(), out.size() * sizeof(float)) == 0;
            printf("%s: staged table = global table bit for bit %s\n", name, same ? "ok" : "FAIL");
            if (!same) failures++;
            out = global_out;
        }
        if (pc && std::any_of(counters.begin(), counters.end(), [](int c) { return c != 0; }))
        {
            printf("%s: a counter was left nonzero FAIL\n", name);
            failures++;
        }
        if (pc || bf16_inputs) { check(name, expected, out, mask, tol); return; }
    }
    if (splits > 1)
        emu_launch(dim3{grid.x, (unsigned)H, 1}, 64, [&] { paged_attention_combine_f32(pw, po, splits, N, H, D, ps, B, generic ? 1 << 30 : max_rows); });
    check(name, expected, out, mask, tol);
}

int main()
{
    run(8, 2, 64, 1, 1 << 30, true);     // the generic kernel: the harness agrees with the reference
    run(6, 2, 64, 3, 7, false);          // groups of 3 in registers for 4, three splits merged; the 10-row prefill left alone
    run(2, 2, 64, 2, 1 << 30, false);    // multi-head: groups of 1
    run(8, 2, 128, 1, 1 << 30, false);   // D = 128: a whole warp per key row (f32)
    std::vector<int> many(40, 1), lengths(40);
    many[20] = 10; many[33] = 2;         // a prefill chunk among 40 sequences: the prefix sum over two groups of 32
    for (int b = 0; b < 40; b++) lengths[b] = many[b] + (b * 7) % 23;
    run(1, 1, 64, 2, 7, false, many, lengths);
    // Sliding windows of 8 and 24 (Mistral-style): rows far past the window (decode after 100, 300), a chunk that starts
    // past it, rows inside it; the splits divide the window's keys, and the gone blocks hold NaNs.
    const std::vector<int> wrows = {1, 1, 1, 3, 10, 20}, wlengths = {37, 100, 0, 20, 10, 300};
    run(8, 2, 64, 1, 1 << 30, true, wrows, wlengths, 8);
    run(8, 2, 64, 3, 1 << 30, true, wrows, wlengths, 24);
    run(6, 2, 64, 3, 7, false, wrows, wlengths, 24);
    run(8, 2, 128, 2, 1 << 30, false, wrows, wlengths, 8);
    run(6, 2, 64, 3, 7, false, {1, 1, 1, 3, 10}, {37, 100, 0, 20, 10}, 0, true);   // the last CTA merges: a padding row, groups of 3
    run(8, 2, 128, 4, 1 << 30, false, {1, 1}, {300, 5}, 0, true);                  // D = 128, a split past a short row's keys
    // At least 64 keys a split (PagedDecodeMinKeysPerSplit): 300 keys fill 5 of 8 splits, 37 and 100 keys 1 and 2, a
    // window of 24 one; the empty splits still count towards the last CTA's merge, and the combine kernel skips them too.
    run(6, 2, 64, 8, 7, false, {1, 1, 1, 1, 10}, {37, 100, 0, 300, 10}, 0, true, 64, true);
    run(8, 2, 128, 8, 1 << 30, false, {1, 1, 1}, {300, 5, 100}, 24, false, 64);
    // A batch-1 row of 300 keys over 18 splits of at least 16 keys (17 each): 18 active splits, so the batched merge takes
    // two batches of 16, and the serial merge must agree with it bit for bit.
    run(4, 1, 64, 18, 1 << 30, false, {1}, {300}, 0, true, 16, true);
    // The tiled decode kernel (paged_decode_tiled, PD_TILE keys a lane group per tile): rows of 1 key, at the edges of blocks
    // of 16 (15, 16, 17, 32, 33), a padding row, rows over many blocks (100, 300); groups of 1, 3 (in registers for 4), 4, 8;
    // one split, splits merged by the combine kernel or by the last CTA (with the 64-key floor), sliding windows over
    // NaN blocks, a prefill chunk left to the tensor cores; f32 (16 or 32 lanes a key row) and bf16 (8 or 16 lanes).
    const std::vector<int> edge_rows = {1, 1, 1, 1, 1, 1, 1, 1, 1}, edge_lengths = {1, 15, 16, 17, 32, 33, 0, 100, 300};
    run(8, 1, 64, 3, 7, false, {1, 1, 1, 1, 1, 10, 1, 1}, {1, 16, 17, 33, 0, 10, 100, 300}, 0, false, 1, false, true);
    run(2, 2, 64, 2, 1 << 30, false, edge_rows, edge_lengths, 0, true, 1, false, true);
    run(8, 2, 128, 4, 1 << 30, false, {1, 1, 1}, {300, 5, 100}, 0, true, 1, false, true);
    run(6, 2, 64, 3, 7, false, wrows, wlengths, 24, false, 1, false, true);
    run(16, 2, 128, 2, 7, false, wrows, wlengths, 8, false, 1, false, true);
    run(6, 2, 64, 8, 1 << 30, false, {1, 1, 1, 1}, {37, 100, 0, 300}, 0, true, 64, false, true);
    run(4, 1, 64, 1, 1 << 30, false, edge_rows, edge_lengths, 0, false, 1, false, true, true);
    run(8, 1, 64, 3, 7, false, {1, 1, 1, 1, 1, 10, 1, 1}, {1, 16, 17, 33, 0, 10, 100, 300}, 0, false, 1, false, true, true);
    run(8, 2, 128, 2, 7, false, wrows, wlengths, 8, true, 1, false, true, true);
    run(2, 2, 64, 1, 1 << 30, false, edge_rows, edge_lengths, 0, false, 1, false, true, true);
    // A decode batch of 64 (lengths 1 to ~600 across block edges), bf16, groups of 4.
    std::vector<int> batch64(64, 1), lengths64(64);
    for (int b = 0; b < 64; b++) lengths64[b] = 1 + (b * 149) % 600;
    run(4, 1, 64, 1, 1 << 30, false, batch64, lengths64, 0, false, 1, false, true, true);
    // The tensor-core decode kernel (paged_decode_mma, bf16) on the stand-ins of cp.async, ldmatrix and mma.sync: keys at the
    // edges of its 64-key tiles and of a warp's 16 (1, 15, 16, 17, 33, 64, 65, 100, 200 keys: tiles in every pipeline state),
    // a padding row, groups of 4, 3 and 8 (its m16 rows), D = 64 and 128, splits merged by the last CTA (with empty splits
    // past the 64-key floor), sliding windows over NaN blocks, and a prefill chunk left to the tensor cores.
    const std::vector<int> mma_rows = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, mma_lengths = {1, 15, 16, 17, 33, 64, 65, 0, 100, 200};
    run(8, 2, 64, 1, 1 << 30, false, mma_rows, mma_lengths, 0, false, 1, false, false, true, true);
    run(6, 2, 64, 3, 7, false, wrows, wlengths, 24, true, 1, false, false, true, true);
    run(16, 2, 128, 4, 7, false, {1, 1, 1, 10}, {300, 5, 100, 10}, 8, true, 64, false, false, true, true);
    // Gemma 2's soft cap (cap tanh(s / cap) on each score) in the generic kernel, the one the host sends capped calls to: a cap
    // of 0.3 against scores of about +-0.3 here (D = 256, scale 1/16) bends most of them; head size 256 (Gemma 2 2B and 9B,
    // Gemma 3), one split and three merged, a window of 24 over NaN blocks, and over an int8 pool.
    run(8, 2, 256, 1, 1 << 30, true, wrows, wlengths, 0, false, 1, false, false, false, false, EmuKv::None, 0.3f);
    run(8, 2, 256, 3, 1 << 30, true, wrows, wlengths, 24, false, 1, false, false, false, false, EmuKv::None, 0.3f);
    run(8, 2, 64, 3, 1 << 30, true, wrows, wlengths, 24, false, 1, false, false, false, false, EmuKv::Int8, 0.3f);
    // Over quantized pools (the _i8 and _f8 instantiations): the generic kernel, paged_decode (f32 and bf16 queries), the
    // tiled kernel, and the tensor-core kernel (PagedRowsQuantized dequantizing into its bf16 tiles), with splits, last-CTA
    // merges, windows over NaN blocks and a prefill chunk left alone; against the reference over what the codes stand for.
    for (EmuKv code : {EmuKv::Int8, EmuKv::Fp8})
    {
        run(8, 2, 64, 3, 1 << 30, true, wrows, wlengths, 24, false, 1, false, false, false, false, code);
        run(6, 2, 64, 3, 7, false, {1, 1, 1, 3, 10}, {37, 100, 0, 20, 10}, 0, true, 1, false, false, false, false, code);
        run(8, 2, 128, 2, 1 << 30, false, wrows, wlengths, 8, false, 1, false, false, false, false, code);
        run(8, 2, 64, 4, 7, false, edge_rows, edge_lengths, 0, true, 64, false, false, true, false, code);   // bf16 queries
        run(2, 2, 64, 2, 1 << 30, false, edge_rows, edge_lengths, 0, true, 1, false, true, false, false, code);
        run(8, 2, 128, 2, 7, false, wrows, wlengths, 8, true, 1, false, true, true, false, code);
        run(8, 2, 64, 1, 1 << 30, false, mma_rows, mma_lengths, 0, false, 1, false, false, true, true, code);
        run(6, 2, 64, 3, 7, false, wrows, wlengths, 24, true, 1, false, false, true, true, code);
        run(16, 2, 128, 4, 7, false, {1, 1, 1, 10}, {300, 5, 100, 10}, 8, true, 64, false, false, true, true, code);
        append_q(code);
    }
    printf("%s\n", failures ? "FAILURES" : "all ok");
    return failures;
}
