// The Hopper attention forward (flash_attention_hopper.cu: wgmma for S = Q K^T from shared memory and O += P V with P in
// registers and V read N-major) in bf16 on the CPU emulation of CUDA (cuda_emulation.h: its warpgroup stand-in of wgmma,
// cp.async), against a double reference over the bf16-rounded inputs: causal grouped-query attention with query t at key
// position S - Tq + t, one and two warpgroups a CTA, head sizes 64 and 128, T past a multiple of the query tile, keys past
// one 128-key block, the natural-log log-sum-exp; the backward (flash_backward_hopper) and serving's paged prefill
// (paged_prefill_hopper), below. kernels.h is written by the test: the emulation, common.cuh, hopper.cuh,
// flash_attention_hopper.cu. Prints one line per check; the exit code is the number of failures.
#include "kernels.h"
#include "paged_pool.h"
#include "emulation_check.h"
#include <cmath>
#include <cstdio>
#include <algorithm>
#include <random>
#include <string>
#include <vector>

alignas(1024) unsigned char smem_raw[1 << 18];   // the kernel's Q tile and two stages of K and V (165 KB at D 128, 2 warpgroups)

static void check(const char* what, const std::vector<double>& e, const std::vector<float>& a, double tol, bool relative)
{
    const EmulationErrors r = errors_of(e.data(), a.data(), e.size());
    report_error(what, 64, relative ? r.relative() : r.difference, tol, relative ? "rel err" : "abs err");
}

// tma: also the tensor-map build (flash_forward_hopper_*_t: K and V by the tensor memory accelerator from 2D maps of k and v;
// WGS must be its warpgroups, 1 at D 64 and 2 at 128), which must give the cp.async build's bits.
static void run(int B, int H, int KH, int Tq, int S, int D, int WGS, bool tma = false)
{
    std::mt19937 rng(11 + B * 7 + H * 5 + Tq * 3 + S + D + WGS);
    std::uniform_real_distribution<float> u(-1, 1);
    auto fill = [&](std::vector<bf16>& v) { for (auto& e : v) e = from_f<bf16>(u(rng)); };
    std::vector<bf16> q((size_t)B * Tq * H * D), k((size_t)B * S * KH * D), v((size_t)B * S * KH * D), o((size_t)B * Tq * H * D);
    fill(q); fill(k); fill(v);
    std::vector<float> lse((size_t)B * H * Tq, NAN);
    const float scale = 1.f / std::sqrt((float)D);
    // Reference: query t of head h attends to keys 0 .. S - Tq + t of kv head h / (H / KH).
    std::vector<double> eo((size_t)B * Tq * H * D), lse_expected((size_t)B * H * Tq);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < Tq; t++)
            {
                const int kvh = h / (H / KH), last = S - Tq + t;
                std::vector<double> s(last + 1);
                double mx = -INFINITY;
                for (int j = 0; j <= last; j++)
                {
                    double dot = 0;
                    for (int d = 0; d < D; d++)
                        dot += (double)to_f(q[(((size_t)b * Tq + t) * H + h) * D + d]) * to_f(k[(((size_t)b * S + j) * KH + kvh) * D + d]);
                    s[j] = dot * scale;
                    mx = std::max(mx, s[j]);
                }
                double sum = 0;
                for (int j = 0; j <= last; j++) sum += std::exp(s[j] - mx);
                lse_expected[((size_t)b * H + h) * Tq + t] = mx + std::log(sum);
                for (int d = 0; d < D; d++)
                {
                    double acc = 0;
                    for (int j = 0; j <= last; j++) acc += std::exp(s[j] - mx) / sum * to_f(v[(((size_t)b * S + j) * KH + kvh) * D + d]);
                    eo[(((size_t)b * Tq + t) * H + h) * D + d] = acc;
                }
            }
    const Strides3 qs{(i64)Tq * H * D, (i64)H * D, D}, ks{(i64)S * KH * D, (i64)KH * D, D};
    const bf16 *pq = q.data(), *pk = k.data(), *pv = v.data();
    bf16* po = o.data();
    float* pl = lse.data();
    int tq = Tq, s_ = S, h_ = H, kh = KH;
    float sc = scale;
    emu_shared_base = smem_raw;
    const unsigned tiles = (unsigned)((Tq + 64 * WGS - 1) / (64 * WGS));
    auto launch = [&](auto kernel) {
        emu_launch(dim3{tiles, (unsigned)H, (unsigned)B}, 128 * WGS, [&] { kernel(pq, pk, pv, po, pl, tq, s_, h_, kh, qs, ks, ks, qs, sc, nullptr); });
    };
    if (D == 64) launch(WGS == 2 ? flash_forward_hopper_bf16_d64 : flash_forward_hopper_wg1_bf16_d64);
    else launch(WGS == 2 ? flash_forward_hopper_bf16_d128 : flash_forward_hopper_wg1_bf16_d128);
    std::vector<float> got(o.size());
    for (size_t i = 0; i < o.size(); i++) got[i] = to_f(o[i]);
    char name[120];
    snprintf(name, sizeof name, "hopper forward B=%d H=%d KH=%d Tq=%d S=%d D=%d WGS=%d", B, H, KH, Tq, S, D, WGS);
    // Tolerance: P is rounded to bf16 before P V (2^-9 relative a weight) and O is stored in bf16: 1.2e-2 of the largest
    // output, as the paged tensor-core decode kernel's; a wrong key, mask or head is O(1).
    check(name, eo, got, 1.2e-2, true);
    // The log-sum-exp in fp32 from the raw scores' max and exp2: 1e-3 absolute (values of order log S).
    snprintf(name, sizeof name, "hopper forward B=%d H=%d KH=%d Tq=%d S=%d D=%d WGS=%d lse", B, H, KH, Tq, S, D, WGS);
    check(name, lse_expected, lse, 1e-3, false);
    if (!tma) return;
    // k and v as (B planes of S rows of KH D values) in boxes of 128 rows by 64 values, as the host encodes them
    auto forward_tma = [&](const std::vector<bf16>& kk, const std::vector<bf16>& vv, std::vector<bf16>& out, std::vector<float>& l) {
        TensorMap km, vm;
        emu_tensor_map_3d(&km, kk.data(), KH * D, S, B, (unsigned long long)KH * D * 2, (unsigned long long)S * KH * D * 2, 64, 128, 2);
        emu_tensor_map_3d(&vm, vv.data(), KH * D, S, B, (unsigned long long)KH * D * 2, (unsigned long long)S * KH * D * 2, 64, 128, 2);
        bf16* po2 = out.data();
        float* pl2 = l.data();
        auto kernel = D == 64 ? flash_forward_hopper_bf16_d64_t : flash_forward_hopper_bf16_d128_t;
        emu_launch(dim3{tiles, (unsigned)H, (unsigned)B}, 128 * WGS, [&] { kernel(km, vm, pq, po2, pl2, tq, s_, h_, kh, qs, qs, sc); });
    };
    std::vector<bf16> o2(o.size());
    std::vector<float> lse2(lse.size(), NAN);
    forward_tma(k, v, o2, lse2);
    size_t differ = 0;
    for (size_t i = 0; i < o.size(); i++) differ += to_f(o[i]) != to_f(o2[i]);
    for (size_t i = 0; i < lse.size(); i++) differ += !(lse[i] == lse2[i]);
    snprintf(name, sizeof name, "hopper forward B=%d H=%d KH=%d Tq=%d S=%d D=%d WGS=%d tma = cp.async bit for bit", B, H, KH, Tq, S, D, WGS);
    printf("%-64s %s\n", name, differ ? "FAIL" : "ok");
    if (differ) { printf("  %zu elements differ\n", differ); failures++; }
    // One sequence's keys and values never reach another's tile: with every K and V value of sequences 1 .. B - 1 NaN,
    // sequence 0 (whose last key block reaches past S when S is not a multiple of 128) keeps its bits.
    std::vector<bf16> kn(k), vn(v), o3(o.size());
    std::vector<float> lse3(lse.size(), NAN);
    for (size_t i = (size_t)S * KH * D; i < kn.size(); i++) kn[i] = vn[i] = from_f<bf16>(NAN);
    forward_tma(kn, vn, o3, lse3);
    size_t leaked = 0;
    for (size_t i = 0; i < (size_t)Tq * H * D; i++) leaked += to_f(o3[i]) != to_f(o[i]);
    snprintf(name, sizeof name, "hopper forward B=%d H=%d KH=%d Tq=%d S=%d D=%d WGS=%d tma: other sequences' NaNs stay there", B, H, KH, Tq, S, D, WGS);
    printf("%-64s %s\n", name, leaked ? "FAIL" : "ok");
    if (leaked) { printf("  %zu elements of sequence 0 changed\n", leaked); failures++; }

    // The warp-specialized forward (a producer and 3 consumer warpgroups at D 64, 2 at 128; q by a 3D map in boxes of the
    // CTA's rows): the cp.async build's bits.
    {
        const int NC = D == 64 ? 3 : 2, BMW = 64 * NC;
        TensorMap qm, km, vm;
        emu_tensor_map_3d(&qm, q.data(), H * D, Tq, B, (unsigned long long)H * D * 2, (unsigned long long)Tq * H * D * 2, 64, BMW, 2);
        emu_tensor_map_3d(&km, k.data(), KH * D, S, B, (unsigned long long)KH * D * 2, (unsigned long long)S * KH * D * 2, 64, 128, 2);
        emu_tensor_map_3d(&vm, v.data(), KH * D, S, B, (unsigned long long)KH * D * 2, (unsigned long long)S * KH * D * 2, 64, 128, 2);
        std::vector<bf16> o4(o.size());
        std::vector<float> lse4(lse.size(), NAN);
        bf16* po4 = o4.data();
        float* pl4 = lse4.data();
        auto kernel = D == 64 ? flash_forward_hopper_ws_bf16_d64 : flash_forward_hopper_ws_bf16_d128;
        const unsigned wtiles = (unsigned)((Tq + BMW - 1) / BMW);
        emu_launch(dim3{wtiles, (unsigned)H, (unsigned)B}, 128 * (NC + 1), [&] { kernel(qm, km, vm, po4, pl4, tq, s_, h_, kh, qs, sc); });
        size_t wdiffer = 0;
        for (size_t i = 0; i < o.size(); i++) wdiffer += to_f(o[i]) != to_f(o4[i]);
        for (size_t i = 0; i < lse.size(); i++) wdiffer += !(lse[i] == lse4[i]);
        snprintf(name, sizeof name, "hopper forward B=%d H=%d KH=%d Tq=%d S=%d D=%d warp-specialized = cp.async bit for bit", B, H, KH, Tq, S, D);
        printf("%-64s %s\n", name, wdiffer ? "FAIL" : "ok");
        if (wdiffer) { printf("  %zu elements differ\n", wdiffer); failures++; }
    }
}

// The backward (flash_backward_hopper: the CTA's keys as wgmma's M dimension, dQ added into an fp32 accumulator by atomic
// reductions) for self-attention (S = T, causal), given dO and the forward's lse and delta = rowsum(dO o O) from the double
// reference, against double dQ, dK, dV (dK and dV summed over a kv head's query heads).
// flags < 0: the first kernel (flash_backward_hopper, WGS warpgroups); otherwise the second (one warpgroup) with those flags
// (CudaBackendOptions.HopperBackwardVariant's: 1 largest work first, 2 dQ by bulk reductions of fragment-order tiles then
// flash_backward_hopper_dq_cast, 4 dQ's product first, 8 with 2 and D 64 the dQ tile in its own buffer; 4 and 8 in the v2x
// build; 32 largest first within windows of flags >> 8 (kv head, batch) pairs).
// tma (with flags >= 0, no 4 or 8): the v2t build, Q and dO by the tensor memory accelerator from 2D maps of q and dout.
static void run_backward(int B, int H, int KH, int T, int D, int WGS, int flags = -1, bool tma = false)
{
    std::mt19937 rng(29 + B * 7 + H * 5 + T * 3 + D + WGS);
    std::uniform_real_distribution<float> u(-1, 1);
    auto fill = [&](std::vector<bf16>& v) { for (auto& e : v) e = from_f<bf16>(u(rng)); };
    const size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KH * D;
    std::vector<bf16> q(nq), k(nk), v(nk), dout(nq), dk(nk), dv(nk);
    fill(q); fill(k); fill(v); fill(dout);
    const float scale = 1.f / std::sqrt((float)D);
    const bool tiles = flags >= 0 && (flags & 2) != 0;
    const int query_blocks = (T + 63) / 64;
    std::vector<float> lse((size_t)B * H * T), delta((size_t)B * H * T), dqacc(tiles ? (size_t)B * H * query_blocks * 64 * D : nq, 0.f);
    std::vector<double> edq(nq, 0.0), edk(nk, 0.0), edv(nk, 0.0);
    auto Q = [&](int b, int t, int h, int d) { return (double)to_f(q[(((size_t)b * T + t) * H + h) * D + d]); };
    auto K_ = [&](int b, int s, int h, int d) { return (double)to_f(k[(((size_t)b * T + s) * KH + h) * D + d]); };
    auto V_ = [&](int b, int s, int h, int d) { return (double)to_f(v[(((size_t)b * T + s) * KH + h) * D + d]); };
    auto dO = [&](int b, int t, int h, int d) { return (double)to_f(dout[(((size_t)b * T + t) * H + h) * D + d]); };
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
        {
            const int kvh = h / (H / KH);
            for (int t = 0; t < T; t++)
            {
                std::vector<double> p(t + 1), dp(t + 1);
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j <= t; j++)
                {
                    double dot = 0;
                    for (int d = 0; d < D; d++) dot += Q(b, t, h, d) * K_(b, j, kvh, d);
                    p[j] = dot * scale;
                    mx = std::max(mx, p[j]);
                }
                for (int j = 0; j <= t; j++) sum += std::exp(p[j] - mx);
                for (int j = 0; j <= t; j++) p[j] = std::exp(p[j] - mx) / sum;
                lse[((size_t)b * H + h) * T + t] = (float)(mx + std::log(sum));
                double del = 0;
                for (int d = 0; d < D; d++)
                {
                    double o = 0;
                    for (int j = 0; j <= t; j++) o += p[j] * V_(b, j, kvh, d);
                    del += o * dO(b, t, h, d);
                }
                delta[((size_t)b * H + h) * T + t] = (float)del;
                for (int j = 0; j <= t; j++)
                {
                    double x = 0;
                    for (int d = 0; d < D; d++) x += dO(b, t, h, d) * V_(b, j, kvh, d);
                    const double ds = p[j] * (x - del);
                    for (int d = 0; d < D; d++)
                    {
                        edq[(((size_t)b * T + t) * H + h) * D + d] += ds * K_(b, j, kvh, d) * scale;
                        edk[(((size_t)b * T + j) * KH + kvh) * D + d] += ds * Q(b, t, h, d) * scale;
                        edv[(((size_t)b * T + j) * KH + kvh) * D + d] += p[j] * dO(b, t, h, d);
                    }
                }
            }
        }
    const Strides3 qs{(i64)T * H * D, (i64)H * D, D}, ks{(i64)T * KH * D, (i64)KH * D, D};
    const bf16 *pq = q.data(), *pk = k.data(), *pv = v.data(), *pd = dout.data();
    const float *pl = lse.data(), *pdel = delta.data();
    float* pacc = dqacc.data();
    bf16 *pdk = dk.data(), *pdv = dv.data();
    int t_ = T, h_ = H, kh = KH;
    float sc = scale;
    emu_shared_base = smem_raw;
    const unsigned blocks = (unsigned)((T + 64 * WGS - 1) / (64 * WGS));
    auto launch = [&](auto kernel) {
        emu_launch(dim3{blocks, (unsigned)KH, (unsigned)B}, 128 * WGS,
                   [&] { kernel(pq, pk, pv, pd, pl, pdel, pacc, pdk, pdv, t_, h_, kh, qs, ks, ks, qs, ks, ks, sc); });
    };
    // With the tiles, the cast's column sums of dQ too (the QKV bias gradient's q part on the way): D / 64 partial rows a
    // (batch, query block); 7.0 where the cast failed to write.
    std::vector<float> q_partial(tiles ? (size_t)B * query_blocks * (D / 64) * H * D : 0, 7.f);
    float* pqs = tiles ? q_partial.data() : nullptr;
    auto launch2 = [&](auto kernel) {
        int f = flags;
        emu_launch(dim3{blocks, (unsigned)KH, (unsigned)B}, 128,
                   [&] { kernel(pq, pk, pv, pd, pl, pdel, pacc, pdk, pdv, t_, h_, kh, qs, ks, ks, qs, ks, ks, sc, f); });
    };
    if (flags < 0)
    {
        if (D == 64) launch(WGS == 2 ? flash_backward_hopper_bf16_d64 : flash_backward_hopper_wg1_bf16_d64);
        else launch(WGS == 2 ? flash_backward_hopper_bf16_d128 : flash_backward_hopper_wg1_bf16_d128);
    }
    else if (flags & 12) launch2(D == 64 ? flash_backward_hopper_v2x_bf16_d64 : flash_backward_hopper_v2x_bf16_d128);
    else if (tma)
    {
        // q and dout as (B T rows of H D values) in boxes of 64 by 64, as the host encodes them
        TensorMap qm, dm;
        emu_tensor_map_2d(&qm, q.data(), H * D, B * T, (unsigned long long)H * D * 2, 64, 64, 2);
        emu_tensor_map_2d(&dm, dout.data(), H * D, B * T, (unsigned long long)H * D * 2, 64, 64, 2);
        auto kernel = D == 64 ? flash_backward_hopper_v2t_bf16_d64 : flash_backward_hopper_v2t_bf16_d128;
        int f = flags;
        emu_launch(dim3{blocks, (unsigned)KH, (unsigned)B}, 128,
                   [&] { kernel(qm, dm, pk, pv, pl, pdel, pacc, pdk, pdv, t_, h_, kh, ks, ks, ks, ks, sc, f); });
    }
    else launch2(D == 64 ? flash_backward_hopper_v2_bf16_d64 : flash_backward_hopper_v2_bf16_d128);
    std::vector<float> gq(nq);
    if (tiles)
    {
        // The fragment-order tiles into dq (bf16, q's strides), as the host does after the kernel.
        std::vector<bf16> dq(nq);
        bf16* pdq = dq.data();
        int b_ = B;
        const unsigned threads = (unsigned)((dqacc.size() / 16 + 255) / 256);
        auto cast = [&](auto kernel) { emu_launch(dim3{threads, 1, 1}, 256, [&] { kernel(pacc, pdq, b_, t_, h_, qs, pqs); }); };
        cast(D == 64 ? flash_backward_hopper_dq_cast_bf16_d64 : flash_backward_hopper_dq_cast_bf16_d128);
        for (size_t i = 0; i < nq; i++) gq[i] = to_f(dq[i]);
    }
    else
        for (size_t i = 0; i < nq; i++) gq[i] = dqacc[i];
    std::vector<float> gk(nk), gv(nk);
    for (size_t i = 0; i < nk; i++) { gk[i] = to_f(dk[i]); gv[i] = to_f(dv[i]); }
    char name[120];
    // Tolerance: P^T and dS^T are rounded to bf16 before their products (2^-9 relative each) and dK, dV are stored in bf16:
    // 1.5e-2 of the largest gradient; a wrong key, query, head or mask is O(1).
    char kind[32];
    if (flags < 0) snprintf(kind, sizeof kind, "WGS=%d", WGS);
    else snprintf(kind, sizeof kind, "%s flags=%d", tma ? "v2t" : "v2", flags);
    snprintf(name, sizeof name, "hopper backward B=%d H=%d KH=%d T=%d D=%d %s dQ", B, H, KH, T, D, kind);
    check(name, edq, gq, 1.5e-2, true);
    snprintf(name, sizeof name, "hopper backward B=%d H=%d KH=%d T=%d D=%d %s dK", B, H, KH, T, D, kind);
    check(name, edk, gk, 1.5e-2, true);
    snprintf(name, sizeof name, "hopper backward B=%d H=%d KH=%d T=%d D=%d %s dV", B, H, KH, T, D, kind);
    check(name, edv, gv, 1.5e-2, true);
    if (!tiles) return;
    // The partial rows summed (as the host's column_reduce does) against the reference's column sums of dQ (H D); the same
    // tolerance, of the largest sum.
    std::vector<double> esum((size_t)H * D, 0.0);
    std::vector<float> gsum((size_t)H * D, 0.f);
    for (size_t r = 0; r < (size_t)B * T; r++)
        for (int c = 0; c < H * D; c++) esum[c] += edq[r * H * D + c];
    for (size_t r = 0; r < q_partial.size() / ((size_t)H * D); r++)
        for (int c = 0; c < H * D; c++) gsum[c] += q_partial[r * H * D + c];
    snprintf(name, sizeof name, "hopper backward B=%d H=%d KH=%d T=%d D=%d %s dQ column sums", B, H, KH, T, D, kind);
    check(name, esum, gsum, 1.5e-2, true);
}

// Serving's prefill chunks on the same forward tile (paged_prefill_hopper): sequences of `rows` new queries each, their keys
// and values in a paged pool (blocks of 16 positions in shuffled pool blocks, K heads then V heads a slot), queries at
// positions length - rows .. length - 1; sequences under min_rows are left to the decode kernels (their output rows must
// stay as they were).
// code int8 or fp8: the pool as int8 values or E4M3 codes with a scale per (slot, head) (emu_quantize_kv_row), read by the
// _i8 or _f8 instantiation through PagedRowsSw128Quantized; the reference reads the bf16 values its tiles hold (scale x
// value rounded to bf16).
static void run_paged(const std::vector<int>& rows, const std::vector<int>& lengths, int H, int KH, int D, int WGS, int min_rows,
                      EmuKv code = EmuKv::None)
{
    const int B = (int)rows.size();
    std::mt19937 rng(41 + B * 7 + H * 5 + D + WGS);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<int> starts(B + 1, 0);
    for (int b = 0; b < B; b++) starts[b + 1] = starts[b] + rows[b];
    const int N = starts[B];
    const EmuPagedPool kv = make_paged_pool(lengths, KH, D, code, rng, [&] { return u(rng); });
    const auto& pool = kv.pool;
    const auto& tables = kv.tables;
    const int max_blocks = kv.max_blocks;
    const long long stride = kv.stride;
    std::vector<bf16> q((size_t)N * H * D), out((size_t)N * H * D);
    for (auto& e : q) e = from_f<bf16>(u(rng));
    for (auto& e : out) e = from_f<bf16>(7.f);   // untouched rows keep this
    const float scale = 1.f / std::sqrt((float)D);
    auto slot = [&](int b, int pos) { return kv.slot(b, pos); };
    std::vector<double> expected(out.size());
    for (size_t i = 0; i < out.size(); i++) expected[i] = 7.0;
    for (int b = 0; b < B; b++)
    {
        if (rows[b] < min_rows) continue;
        for (int r = 0; r < rows[b]; r++)
            for (int h = 0; h < H; h++)
            {
                const int n = starts[b] + r, kvh = h / (H / KH), last = lengths[b] - rows[b] + r;
                std::vector<double> sc(last + 1);
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j <= last; j++)
                {
                    double dot = 0;
                    for (int d = 0; d < D; d++)
                        dot += (double)to_f(q[((size_t)n * H + h) * D + d]) * to_f(pool[slot(b, j) * stride + (size_t)kvh * D + d]);
                    sc[j] = dot * scale;
                    mx = std::max(mx, sc[j]);
                }
                for (int j = 0; j <= last; j++) sum += std::exp(sc[j] - mx);
                for (int d = 0; d < D; d++)
                {
                    double acc = 0;
                    for (int j = 0; j <= last; j++) acc += std::exp(sc[j] - mx) / sum * to_f(pool[slot(b, j) * stride + (size_t)(KH + kvh) * D + d]);
                    expected[((size_t)n * H + h) * D + d] = acc;
                }
            }
    }
    const bf16 *pq = q.data(), *pp = pool.data();
    bf16* po = out.data();
    const int *pt = tables.data(), *pst = starts.data(), *pl = lengths.data();
    int b_ = B, h_ = H, k_ = KH, bs = kv.block_size, mb = max_blocks, mr = min_rows, window = 1 << 30;
    long long qn = (long long)H * D, qh = D;
    float sc = scale;
    emu_shared_base = smem_raw;
    const int tile_rows = 64 * WGS;
    const unsigned tiles = (unsigned)((N + tile_rows - 1) / tile_rows + std::min(B, N / min_rows));   // as the host sizes the grid
    auto launch = [&](auto kernel) {
        emu_launch(dim3{tiles, (unsigned)H, 1}, 128 * WGS, [&] { kernel(pq, pp, po, pt, pst, pl, b_, h_, k_, bs, mb, qn, qh, sc, mr, window); });
    };
    const signed char* p8 = reinterpret_cast<const signed char*>(kv.codes.data());   // the pool's bytes as int8 values
    const unsigned char* pf8 = kv.codes.data();                                     // or as E4M3 codes
    const float* ps8 = kv.scales.data();
    auto launch8 = [&](auto kernel, auto codes) {
        emu_launch(dim3{tiles, (unsigned)H, 1}, 128 * WGS, [&] { kernel(pq, codes, po, pt, pst, pl, b_, h_, k_, bs, mb, qn, qh, sc, mr, window, ps8); });
    };
    if (code == EmuKv::Int8 && D == 64) launch8(WGS == 2 ? paged_prefill_hopper_i8_bf16_d64 : paged_prefill_hopper_wg1_i8_bf16_d64, p8);
    else if (code == EmuKv::Int8) launch8(WGS == 2 ? paged_prefill_hopper_i8_bf16_d128 : paged_prefill_hopper_wg1_i8_bf16_d128, p8);
    else if (code == EmuKv::Fp8 && D == 64) launch8(WGS == 2 ? paged_prefill_hopper_f8_bf16_d64 : paged_prefill_hopper_wg1_f8_bf16_d64, pf8);
    else if (code == EmuKv::Fp8) launch8(WGS == 2 ? paged_prefill_hopper_f8_bf16_d128 : paged_prefill_hopper_wg1_f8_bf16_d128, pf8);
    else if (D == 64) launch(WGS == 2 ? paged_prefill_hopper_bf16_d64 : paged_prefill_hopper_wg1_bf16_d64);
    else launch(WGS == 2 ? paged_prefill_hopper_bf16_d128 : paged_prefill_hopper_wg1_bf16_d128);
    // The computed rows against the reference; the rows of sequences left to the decode kernels exactly as they were.
    std::vector<double> e_rows;
    std::vector<float> g_rows;
    bool untouched = true;
    for (int b = 0; b < B; b++)
        for (size_t i = (size_t)starts[b] * H * D; i < (size_t)starts[b + 1] * H * D; i++)
            if (rows[b] >= min_rows) { e_rows.push_back(expected[i]); g_rows.push_back(to_f(out[i])); }
            else untouched &= to_f(out[i]) == 7.f;
    char name[120];
    snprintf(name, sizeof name, "hopper paged prefill B=%d N=%d H=%d KH=%d D=%d WGS=%d%s", B, N, H, KH, D, WGS, emu_kv_name(code));
    check(name, e_rows, g_rows, 1.2e-2, true);
    printf("%-64s %s\n", (std::string(name) + ": short sequences untouched").c_str(), untouched ? "ok" : "FAIL");
    if (!untouched) failures++;
}

int main()
{
    run(1, 2, 1, 100, 100, 64, 1);    // one warpgroup, a query tile and a part; 2 query heads sharing a kv head
    run(2, 2, 2, 70, 200, 64, 2);     // two warpgroups (the second wholly past T in the last tile), a KV cache longer than T
    run(1, 4, 2, 130, 130, 128, 1);   // head size 128 (two swizzle blocks); keys past one block of 128
    run(1, 2, 1, 64, 300, 128, 2);    // D 128, two warpgroups, three key blocks
    run(3, 4, 2, 150, 150, 64, 1, true);    // K and V by the TMA: three sequences (a block's rows past S zeros), two key blocks
    run(2, 2, 1, 70, 200, 128, 2, true);    // D 128 (two column boxes a block), a KV cache longer than T
    run(1, 2, 1, 700, 700, 64, 1, true);    // six key blocks: the warp-specialized ring of four stages wraps; four query tiles of 192
    run_backward(1, 2, 1, 100, 64, 1);   // one warpgroup; a query block and a part; 2 query heads into one kv head's dK, dV
    run_backward(2, 2, 2, 150, 64, 2);   // two warpgroups (128 keys a CTA), the last CTA's second warpgroup past T
    run_backward(1, 2, 1, 70, 128, 1);   // head size 128: dQ in two 64-column halves
    for (int flags : {0, 1, 2, 3, 5, 10, 11})   // the second kernel, every flag set the host uses (variants 2-8)
        run_backward(1, 4, 2, 150, 64, 1, flags);
    // Variants 9 and 10: largest first within windows of 4 (kv head, batch) pairs, over 6 pairs (a partial last window)
    for (int flags : {34 | 4 << 8, 42 | 4 << 8})
        run_backward(3, 4, 2, 150, 64, 1, flags);
    // The v2t build (Q and dO by the tensor memory accelerator): the default variant 9's flags over three sequences (a tile's
    // rows past T are the next sequence's, masked), the per-element dQ reductions, and head size 128
    run_backward(3, 4, 2, 150, 64, 1, 34 | 4 << 8, true);
    run_backward(2, 4, 2, 100, 64, 1, 0, true);
    run_backward(2, 2, 1, 100, 128, 1, 2, true);
    run_backward(1, 2, 1, 100, 128, 1, 2);      // D 128 with the bulk-reduced dQ tiles
    run_backward(2, 2, 2, 200, 128, 1, 3);      // D 128, two batches: two partial rows a query block
    run_paged({100, 3, 70, 200}, {300, 40, 70, 260}, 2, 1, 64, 1, 8);   // chunks after cached context; a 3-row sequence left alone
    run_paged({130, 65}, {130, 200}, 4, 2, 128, 2, 8);                   // D 128, two warpgroups, tiles across two sequences
    for (EmuKv code : {EmuKv::Int8, EmuKv::Fp8})   // the same over int8 and fp8 pools
    {
        run_paged({100, 3, 70, 200}, {300, 40, 70, 260}, 2, 1, 64, 1, 8, code);
        run_paged({130, 65}, {130, 200}, 4, 2, 128, 2, 8, code);
    }
    printf("%s\n", failures ? "FAILURES" : "all ok");
    return failures;
}
