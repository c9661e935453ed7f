// The training products' Hopper kernel (gemm_hopper.cu: persistent, a producer warpgroup issuing the tensor memory
// accelerator's copies into a ring of stages, two consumer warpgroups on wgmma) in bf16 on the CPU emulation of CUDA
// (cuda_emulation.h: transaction barriers, tensor-map copies and wgmma emulated; the warpgroups' threads run together, so
// a wrong phase or a stage handed back early shows as a wrong sum or a barrier that never completes). Against a double
// reference over the bf16 inputs: M, N and K each short of a tile (boxes past them arrive as zeros), N odd (the last
// output stored alone), fewer CTAs than tiles (each CTA walks several, its ring crossing tile boundaries), more k-tiles
// than stages (the ring wraps), both column widths (256 and 128), bias, alpha and beta = 1; the row stride's padding past
// N is left untouched; the epilogue staged through shared memory and stored by the tensor memory accelerator (its boxes
// clipped at M and N) and stored straight from registers. And the clusters of two (gemm_hopper_nt_mc_*: each CTA copies half of B's tile into both CTAs'
// shared memory, and a stage goes back to a producer once both CTAs' consumers are done with it), run as a cluster's CTAs
// run together, each in its own shared memory: a copy into the wrong CTA, a barrier credited in the wrong one or an early
// hand-back shows as a wrong sum or a barrier that never completes. And the SwiGLU form (gate/up product and SiLU(gate) * up
// in one launch) against a double reference and, bit for bit, SwiGluForward's formula on the stored gate and up.
// kernels.h is written by the test: the emulation, common.cuh, hopper.cuh, gemm_hopper.cu. Prints one line per check; the
// exit code is the number of failures.
#include "kernels.h"
#include "emulation_check.h"
#include <cmath>
#include <cstring>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

alignas(1024) unsigned char gh_raw[1 << 18];   // 256 KB: the kernel's stages (193 KB at 256 columns)

// Values u uniform in [-scale, scale), rounded to bf16.
static void fill(std::vector<bf16>& v, std::mt19937& rng, float scale)
{
    std::uniform_real_distribution<float> u(-1, 1);
    for (auto& e : v) e = from_f<bf16>(scale * u(rng));
}

// Layout "nt": A stored (M, K), B (N, K); "nn": A (M, K), B (K, N); "tn": A (K, M), B (K, N). With an addend, the beta term
// reads it (c's layout) instead of c.
static void run(const char* layout, int M, int N, int K, int BN, int ctas, bool with_bias, float alpha, float beta, int cluster = 1,
                int staged = 1, bool with_addend = false)
{
    staged = N % 8 == 0 ? staged : 0;   // as the host launches it (2: the epilogue deferred into the next tile's main loop)
    const bool ta = layout[0] == 't', tb = layout[1] == 'n';   // A stored as rows of K (MN-major); B stored as rows of K
    const unsigned seed = 11 + M * 7 + N * 3 + K + BN + ctas + (ta ? 100 : 0) + (tb ? 200 : 0);
    std::mt19937 rng(seed);
    // Row strides past the rows: the kernel must use them (multiples of 8 values: the tensor maps' 16-byte strides). C's: a
    // multiple of 8 when staged, else even and not a multiple of 8.
    const int arows = ta ? K : M, acols = ta ? M : K, brows = tb ? K : N, bcols = tb ? N : K;
    const int lda = acols + 8, ldb = bcols + 16, ldc = staged ? (N + 15) / 8 * 8 : ((N + 7) & ~1) % 8 ? (N + 7) & ~1 : ((N + 7) & ~1) + 2;
    std::vector<bf16> a((size_t)arows * lda), b((size_t)brows * ldb), bias(N), c0((size_t)M * ldc), add((size_t)M * ldc);
    fill(a, rng, 1.f); fill(b, rng, 0.1f); fill(bias, rng, 1.f); fill(c0, rng, 1.f); fill(add, rng, 1.f);
    auto A = [&](int m, int k) { return (double)to_f(ta ? a[(size_t)k * lda + m] : a[(size_t)m * lda + k]); };
    auto B = [&](int k, int n) { return (double)to_f(tb ? b[(size_t)k * ldb + n] : b[(size_t)n * ldb + k]); };
    const std::vector<bf16>& in = with_addend ? add : c0;
    std::vector<bf16> c = c0;
    std::vector<double> e((size_t)M * N);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++)
        {
            double s = 0;
            for (int k = 0; k < K; k++) s += A(m, k) * B(k, n);
            e[(size_t)m * N + n] = alpha * s + (with_bias ? to_f(bias[n]) : 0.0) + beta * to_f(in[(size_t)m * ldc + n]);
        }
    // The maps the host encodes: a K-major operand in boxes of its tile's rows (B's shared by the cluster's CTAs) by 64 of K,
    // an MN-major one in boxes of 64 rows of K by 64; C (M rows of N) in boxes of 64 rows.
    TensorMap am, bm, cm{}, im{}, om{};
    emu_tensor_map_2d(&am, a.data(), acols, arows, (unsigned long long)lda * 2, 64, ta ? 64 : 128, 2);
    emu_tensor_map_2d(&bm, b.data(), bcols, brows, (unsigned long long)ldb * 2, 64, tb ? 64 : BN / cluster, 2);
    if (staged) emu_tensor_map_2d(&cm, c.data(), N, M, (unsigned long long)ldc * 2, 64, 64, 2);
    if (staged && beta != 0) emu_tensor_map_2d(&im, with_addend ? add.data() : c.data(), N, M, (unsigned long long)ldc * 2, 64, 64, 2);
    emu_shared_base = gh_raw;
    const bf16* pbias = with_bias ? bias.data() : nullptr;
    bf16* pc = c.data();
    const bf16* pin = with_addend ? add.data() : pc;
    long long lc = ldc;
    auto launch = [&](auto kernel) {
        auto body = [&] { kernel(am, bm, cm, im, om, pbias, pc, pin, M, N, K, lc, alpha, beta, staged); };
        if (cluster == 1) emu_launch(ctas, 384, body);
        else emu_launch_cluster(ctas, cluster, 384, body);   // the pairs' CTAs together, each in its own shared memory
    };
#define PICK(L)                                                                                                           \
    if (cluster == 1) { if (BN == 256) launch(gemm_hopper_##L##_bf16_n256); else launch(gemm_hopper_##L##_bf16_n128); }  \
    else if (BN == 256) launch(gemm_hopper_##L##_mc_bf16_n256);                                                           \
    else launch(gemm_hopper_##L##_mc_bf16_n128);
    if (!ta && !tb) { PICK(nt) }
    else if (!ta) { PICK(nn) }
    else { PICK(tn) }
    std::vector<float> got((size_t)M * N);
    bool pads = true;
    for (int m = 0; m < M; m++)
    {
        for (int n = 0; n < N; n++) got[(size_t)m * N + n] = to_f(c[(size_t)m * ldc + n]);
        for (int n = N; n < ldc; n++) pads &= c[(size_t)m * ldc + n].x == c0[(size_t)m * ldc + n].x;
    }
    char name[120];
    snprintf(name, sizeof name, "gemm_hopper_%s%s M=%d N=%d K=%d BN=%d ctas=%d bias=%d beta=%g%s%s", layout, cluster > 1 ? "_mc" : "", M, N, K,
             BN, ctas, with_bias ? 1 : 0, beta, with_addend ? " addend" : "", staged == 2 ? " overlapped" : staged ? " staged" : " direct");
    // Tolerance: C is stored in bf16 (2^-9 relative per value); the sums are fp32 over exact bf16 products, so 8e-3 of the
    // largest output leaves margin, while a wrong row, column, k-tile or stage is O(1).
    char extra[40];
    snprintf(extra, sizeof extra, " (seed %u)", seed);
    report_error(name, 72, errors_of(e.data(), got.data(), e.size()).relative(), 8e-3, "rel err", extra);
    printf("%-72s %s\n", (std::string(name) + ": pads").c_str(), pads ? "ok" : "FAIL");
    if (!pads) failures++;
}

// The SwiGLU form (gemm_hopper_swiglu*): x (M, K) times the stacked [Wg; Wu] (2F rows of K) into gu (M, 2F) and the
// activation (M, F), as the product into gu then SwiGluForward: gu against a double reference (8e-3 of the largest, a bf16
// store), and the activation bit for bit against SiLU(gate) * up computed here from the gate and up values the kernel stored
// (SwiGluForward's formula: fp32 from the rounded halves, rounded once); gu's and the activation's row padding untouched.
static void run_swiglu(int M, int F, int K, int ctas, int cluster, int staged = 1)
{
    const unsigned seed = 77 + M * 5 + F * 3 + K + ctas + cluster;
    std::mt19937 rng(seed);
    const int ldx = K + 8, ldw = K + 16, ldg = 2 * F + 8, lda = F + 8;   // strides past the rows (multiples of 8 values)
    std::vector<bf16> x((size_t)M * ldx), w((size_t)2 * F * ldw), gu0((size_t)M * ldg), a0((size_t)M * lda);
    fill(x, rng, 1.f); fill(w, rng, 0.1f); fill(gu0, rng, 1.f); fill(a0, rng, 1.f);
    std::vector<bf16> gu = gu0, act = a0;
    std::vector<double> e((size_t)M * 2 * F);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < 2 * F; n++)
        {
            double sum = 0;
            for (int k = 0; k < K; k++) sum += (double)to_f(x[(size_t)m * ldx + k]) * to_f(w[(size_t)n * ldw + k]);
            e[(size_t)m * 2 * F + n] = sum;
        }
    // The host's maps: x in boxes of 128 rows, [Wg; Wu] in boxes of 128 rows, gu's halves and the activation in 64 x 64.
    TensorMap xm, wm, gm, um, am;
    emu_tensor_map_2d(&xm, x.data(), K, M, (unsigned long long)ldx * 2, 64, 128, 2);
    emu_tensor_map_2d(&wm, w.data(), K, 2 * F, (unsigned long long)ldw * 2, 64, 128, 2);
    emu_tensor_map_2d(&gm, gu.data(), F, M, (unsigned long long)ldg * 2, 64, 64, 2);
    emu_tensor_map_2d(&um, gu.data() + F, F, M, (unsigned long long)ldg * 2, 64, 64, 2);
    emu_tensor_map_2d(&am, act.data(), F, M, (unsigned long long)lda * 2, 64, 64, 2);
    emu_shared_base = gh_raw;
    bf16* pg = gu.data();
    long long lg = ldg;
    auto body = [&](auto kernel) {
        return [&, kernel] { kernel(xm, wm, gm, um, am, nullptr, pg, pg, M, F, K, lg, 1.f, 0.f, staged); };
    };
    if (cluster == 1) emu_launch(ctas, 384, body(gemm_hopper_swiglu_bf16_n256));
    else emu_launch_cluster(ctas, cluster, 384, body(gemm_hopper_swiglu_mc_bf16_n256));
    std::vector<float> got((size_t)M * 2 * F);
    bool bits = true, pads = true;
    for (int m = 0; m < M; m++)
    {
        for (int n = 0; n < 2 * F; n++) got[(size_t)m * 2 * F + n] = to_f(gu[(size_t)m * ldg + n]);
        for (int f = 0; f < F; f++)
        {
            const float gate = to_f(gu[(size_t)m * ldg + f]), up = to_f(gu[(size_t)m * ldg + F + f]);
            bits &= act[(size_t)m * lda + f].x == from_f<bf16>(silu(gate) * up).x;
        }
        for (int n = 2 * F; n < ldg; n++) pads &= gu[(size_t)m * ldg + n].x == gu0[(size_t)m * ldg + n].x;
        for (int f = F; f < lda; f++) pads &= act[(size_t)m * lda + f].x == a0[(size_t)m * lda + f].x;
    }
    char name[120], extra[40];
    snprintf(name, sizeof name, "gemm_hopper_swiglu%s M=%d F=%d K=%d ctas=%d%s", cluster > 1 ? "_mc" : "", M, F, K, ctas,
             staged == 2 ? " overlapped" : "");
    snprintf(extra, sizeof extra, " (seed %u)", seed);
    report_error(name, 72, errors_of(e.data(), got.data(), e.size()).relative(), 8e-3, "rel err", extra);
    printf("%-72s %s\n", (std::string(name) + ": activation = SiLU(gate) * up, bits").c_str(), bits ? "ok" : "FAIL");
    printf("%-72s %s\n", (std::string(name) + ": pads").c_str(), pads ? "ok" : "FAIL");
    if (!bits) failures++;
    if (!pads) failures++;
}

// The SwiGLU gradient form (gemm_hopper_dswiglu*): dA = dy (M, C) times the down weight (C rows of F), then dg and du from
// gu's halves (g, u) in the epilogue, into dgu (M, 2F), as the nn product into dA then SwiGluBackward: dgu against a double
// reference (dA's sum in double, the bf16 g and u; 2e-2 of the largest, dA being rounded to bf16 before the gradient as the
// composition does), and bit for bit against SwiGluBackward's formula applied here to the dA the plain nn kernel stores for the same
// inputs; dgu's row padding untouched, gu unchanged.
static void run_dswiglu(int M, int F, int C, int ctas, int cluster, int staged = 1)
{
    const unsigned seed = 91 + M * 5 + F * 3 + C + ctas + cluster + staged;
    std::mt19937 rng(seed);
    const int ldy = C + 8, ldw = F + 16, ldg = 2 * F + 8, ldd = 2 * F + 24, lda = F + 8;   // multiples of 8 values
    std::vector<bf16> dy((size_t)M * ldy), w((size_t)C * ldw), gu((size_t)M * ldg), d0((size_t)M * ldd), da((size_t)M * lda);
    fill(dy, rng, 1.f); fill(w, rng, 0.1f); fill(gu, rng, 2.f); fill(d0, rng, 1.f);
    const std::vector<bf16> gu0 = gu;
    std::vector<bf16> dgu = d0;
    std::vector<double> e((size_t)M * 2 * F);
    for (int m = 0; m < M; m++)
        for (int f = 0; f < F; f++)
        {
            double sum = 0;
            for (int k = 0; k < C; k++) sum += (double)to_f(dy[(size_t)m * ldy + k]) * to_f(w[(size_t)k * ldw + f]);
            const double g = to_f(gu[(size_t)m * ldg + f]), u = to_f(gu[(size_t)m * ldg + F + f]), s = 1 / (1 + std::exp(-g));
            e[(size_t)m * 2 * F + f] = sum * u * s * (1 + g * (1 - s));
            e[(size_t)m * 2 * F + F + f] = sum * g * s;
        }
    // The host's maps: dy in boxes of 128 rows by 64, the weight (C rows of F) in 64 x 64 (MN-major), gu and dgu's halves in
    // 64 rows by 32 columns in the 64-byte swizzle.
    TensorMap ym, wm, dgm, gm, dum;
    emu_tensor_map_2d(&ym, dy.data(), C, M, (unsigned long long)ldy * 2, 64, 128, 2);
    emu_tensor_map_2d(&wm, w.data(), F, C, (unsigned long long)ldw * 2, 64, 64, 2);
    emu_tensor_map_2d(&gm, gu.data(), 2 * F, M, (unsigned long long)ldg * 2, 32, 64, 2, 64);
    emu_tensor_map_2d(&dgm, dgu.data(), F, M, (unsigned long long)ldd * 2, 32, 64, 2, 64);
    emu_tensor_map_2d(&dum, dgu.data() + F, F, M, (unsigned long long)ldd * 2, 32, 64, 2, 64);
    emu_shared_base = gh_raw;
    bf16* pd = dgu.data();
    long long ld = ldd;
    auto body = [&](auto kernel) {
        return [&, kernel] { kernel(ym, wm, dgm, gm, dum, nullptr, pd, pd, M, F, C, ld, 1.f, 0.f, staged); };
    };
    if (cluster == 1) emu_launch(ctas, 384, body(gemm_hopper_dswiglu_bf16_n256));
    else emu_launch_cluster(ctas, cluster, 384, body(gemm_hopper_dswiglu_mc_bf16_n256));
    // dA as the plain nn kernel stores it (the composition's product), for the bit-for-bit check.
    TensorMap am, none{};
    emu_tensor_map_2d(&am, da.data(), F, M, (unsigned long long)lda * 2, 64, 64, 2);
    bf16* pa = da.data();
    long long la = lda;
    emu_launch(ctas, 384, [&] { gemm_hopper_nn_bf16_n256(ym, wm, am, none, none, nullptr, pa, pa, M, F, C, la, 1.f, 0.f, 1); });
    std::vector<float> got((size_t)M * 2 * F);
    bool bits = true, pads = true, kept = std::memcmp(gu.data(), gu0.data(), gu.size() * sizeof(bf16)) == 0;
    for (int m = 0; m < M; m++)
    {
        for (int n = 0; n < 2 * F; n++) got[(size_t)m * 2 * F + n] = to_f(dgu[(size_t)m * ldd + n]);
        for (int f = 0; f < F; f++)
        {
            float dg, du;
            swiglu_grad(to_f(da[(size_t)m * lda + f]), to_f(gu[(size_t)m * ldg + f]), to_f(gu[(size_t)m * ldg + F + f]), dg, du);
            bits &= dgu[(size_t)m * ldd + f].x == from_f<bf16>(dg).x && dgu[(size_t)m * ldd + F + f].x == from_f<bf16>(du).x;
        }
        for (int n = 2 * F; n < ldd; n++) pads &= dgu[(size_t)m * ldd + n].x == d0[(size_t)m * ldd + n].x;
    }
    char name[120], extra[40];
    snprintf(name, sizeof name, "gemm_hopper_dswiglu%s M=%d F=%d C=%d ctas=%d%s", cluster > 1 ? "_mc" : "", M, F, C, ctas,
             staged == 2 ? " overlapped" : "");
    snprintf(extra, sizeof extra, " (seed %u)", seed);
    report_error(name, 72, errors_of(e.data(), got.data(), e.size()).relative(), 2e-2, "rel err", extra);
    printf("%-72s %s\n", (std::string(name) + ": = SwiGluBackward of the stored dA, bits").c_str(), bits ? "ok" : "FAIL");
    printf("%-72s %s\n", (std::string(name) + ": pads, gu unchanged").c_str(), pads && kept ? "ok" : "FAIL");
    if (!bits) failures++;
    if (!pads || !kept) failures++;
}

int main()
{
    run("nt", 300, 521, 200, 256, 2, true, 0.5f, 1.f);    // 3 x 3 tiles on 2 CTAs; M, N (odd: stored from registers), K short of a tile
    run("nt", 130, 251, 64, 128, 3, false, 1.f, 0.f);     // 2 x 2 tiles on 3 CTAs (one idle after its tile)
    run("nt", 128, 256, 576, 256, 1, true, 1.f, 0.f);     // one tile, 9 k-tiles through 4 stages
    run("nt", 256, 384, 448, 128, 2, false, 2.f, 1.f);    // 2 x 3 tiles, 7 k-tiles through 6 stages, across tiles
    run("nt", 200, 136, 128, 256, 1, false, 1.f, 1.f, 1, 1, true);   // the residual as an addend
    run("nt", 300, 520, 200, 256, 2, true, 0.5f, 1.f);    // staged (N a multiple of 8), C_in loaded through the buffers
    run("nt", 256, 384, 1024, 128, 2, false, 1.f, 0.5f, 2);   // more tiles than CTAs: C_in's first chunks load under the k-loop
    run("nt", 256, 256, 64, 256, 1, false, 1.f, 1.f);     // one k-tile: C_in's first chunks load at k-tile 0
    run("nt", 512, 256, 64, 256, 2, true, 1.f, 1.f, 2);
    // Clusters of 2 with B multicast: each pair's CTAs take adjacent row tiles of one column tile.
    run("nt", 300, 521, 200, 256, 2, true, 0.5f, 1.f, 2);  // one pair walks 2 x 3 units; the last unit's second row tile past M
    run("nt", 256, 250, 576, 128, 4, false, 1.f, 0.f, 2);  // two pairs, one of them idle after its unit; 9 k-tiles through 6 stages
    run("nt", 256, 250, 576, 128, 4, false, 1.f, 1.f, 2, 0);
    run("nt", 512, 512, 320, 256, 2, true, 1.f, 1.f, 2);   // 2 x 2 units on one pair
    // The gradients' layouts: B (K, N) read transposed (nn), and A stored (K, M) too (tn, beta = 1 as a weight's gradient
    // accumulates).
    run("nn", 300, 520, 200, 256, 2, false, 1.f, 0.f);
    run("nn", 256, 392, 320, 128, 2, true, 1.f, 1.f, 2);
    run("nn", 136, 264, 136, 256, 2, false, 1.f, 0.f, 2, 0);
    run("tn", 264, 520, 200, 256, 2, false, 1.f, 1.f);
    run("tn", 256, 136, 448, 128, 4, false, 0.5f, 1.f, 2);
    run("tn", 392, 256, 136, 256, 2, true, 1.f, 0.f, 2, 0);
    // The epilogue deferred into the next tile's main loop (staged = 2, no C_in): tiles walked across, fewer k-tiles than
    // chunks (the rest stored after the loop), clusters, the three layouts, bias and alpha on the way into the registers.
    run("nt", 300, 520, 200, 256, 2, true, 0.5f, 0.f, 1, 2);
    run("nt", 256, 384, 64, 128, 2, false, 1.f, 0.f, 2, 2);
    run("nn", 300, 520, 136, 256, 1, false, 1.f, 0.f, 1, 2);
    run("tn", 264, 520, 448, 256, 2, true, 2.f, 0.f, 2, 2);
    // The SwiGLU form: F short of a tile (the last tile's gate rows run into the up rows, whose outputs are not stored), more
    // tiles than CTAs, the clusters' multicast (CTA r copies the gate or the up half).
    run_swiglu(300, 200, 136, 2, 1);
    run_swiglu(256, 136, 448, 2, 2);
    run_swiglu(130, 264, 200, 4, 2);
    run_swiglu(300, 200, 136, 2, 1, 2);   // the epilogue deferred into the next tile: 3 k-tiles, so 3 of 6 chunks after the loop
    run_swiglu(256, 392, 448, 2, 2, 2);   // 7 k-tiles: every chunk under the next tile's products
    // The SwiGLU gradient form: F short of a tile (g's boxes past F read u's first columns, whose gradients are not stored),
    // more tiles than CTAs (g and u of the next tile's first chunks load under the last k-tiles), one k-tile, clusters.
    run_dswiglu(300, 200, 136, 2, 1);
    run_dswiglu(256, 520, 448, 2, 1);
    run_dswiglu(130, 264, 64, 4, 2);
    run_dswiglu(256, 256, 320, 2, 2);
    // Its epilogue deferred into the next tile's main loop: 9 and 11 k-tiles (each of the eight chunks under one of the next
    // tile's k-tiles, the next tile's first g and u loads after the last), more tiles than CTAs, clusters; and 8 k-tiles, too
    // few (those loads would overwrite the pending tile's last g and u: the emulation stalls), so stored at once.
    run_dswiglu(300, 520, 576, 2, 1, 2);
    run_dswiglu(256, 264, 704, 2, 2, 2);
    run_dswiglu(300, 200, 512, 2, 1, 2);
    return failures;
}
