// Group-wise int4 kernels of int4.cu on the CPU emulation of CUDA (f32 instantiations: the 16-bit conversions are PTX, which
// the emulation compiles away). Weights are drawn (seeded) as nibbles, F32 scales and zero points (symmetric: every zero 8;
// asymmetric: zeros drawn in 0 .. 15), packed here by a plain loop (column 8w + j of a row in bits 4j of its word w), and:
//   dequantize_int4_f32 must give scale * (q - zero) bit for bit (one fp32 product, as the CPU's F32 dequantization);
//   gemv_int4_f32_m{1..4} must give y = x W^T + bias + beta c against a double reference over the same dequantized weight,
//   within 1e-5 of sum |x w| + |bias| + |beta c| (fp32 sums in another order; K <= 1024 terms), over shapes with odd N,
//   several group sizes (32, 64, 128, a whole row, a last group shorter than the others), bias or none, beta 0 or with an
//   addend, and a grid smaller than the rows (the warps' grid stride); K a multiple of 32 takes the 16-byte quads (groups of
//   16 too, whose quads straddle two groups), other K single words.
// kernels.h is written by the test: the emulation, common.cuh, int4.cu. Prints one line per check; exit code = failures.
#include "kernels.h"
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

static int failures = 0;
static void report(const std::string& what, bool ok, const std::string& detail = "")
{
    printf("%-72s %s%s\n", what.c_str(), detail.c_str(), ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

struct Weight
{
    int N, K, group, groups;
    std::vector<int> q;                 // (N, K) nibbles
    std::vector<unsigned> packed;       // (N, K / 8)
    std::vector<float> scales;          // (N, G)
    std::vector<signed char> zeros;     // (N, G)
    double at(int n, int k) const { int g = n * groups + k / group; return (double)(scales[g] * (float)(q[n * K + k] - zeros[g])); }
};

static Weight draw(std::mt19937& rng, int N, int K, int group, bool sym)
{
    Weight w{N, K, group, (K + group - 1) / group};
    w.q.resize((size_t)N * K); w.packed.assign((size_t)N * K / 8, 0u);
    w.scales.resize((size_t)N * w.groups); w.zeros.resize((size_t)N * w.groups);
    std::uniform_real_distribution<float> s(0.001f, 0.05f);
    for (int i = 0; i < N * K; i++) w.q[i] = (int)(rng() % 16);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < K; c++) w.packed[(n * K + c) / 8] |= (unsigned)w.q[n * K + c] << (4 * (c % 8));
    for (int i = 0; i < N * w.groups; i++) { w.scales[i] = s(rng); w.zeros[i] = sym ? 8 : (signed char)(rng() % 16); }
    return w;
}

static void dequantize_check(std::mt19937& rng, int N, int K, int group, bool sym)
{
    auto w = draw(rng, N, K, group, sym);
    std::vector<float> out((size_t)N * K, NAN);
    const unsigned* pq = w.packed.data(); const float* ps = w.scales.data(); const signed char* pz = w.zeros.data(); float* po = out.data();
    emu_launch(3, 64, [=] { dequantize_int4_f32(pq, ps, pz, po, (i64)N, K, group); });
    int bad = 0;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) if (out[(size_t)n * K + k] != (float)w.at(n, k)) bad++;
    char what[160];
    snprintf(what, sizeof what, "dequantize_int4_f32 N=%d K=%d group=%d %s", N, K, group, sym ? "sym" : "asym");
    report(what, bad == 0, bad ? std::to_string(bad) + " differ " : "");
}

static void gemv_check(std::mt19937& rng, int M, int N, int K, int group, bool sym, bool bias, bool addend, unsigned blocks)
{
    auto w = draw(rng, N, K, group, sym);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const i64 ldx = K + 8, ldy = N + 3, ldc = N + 5;
    std::vector<float> x((size_t)M * ldx), b(N), c((size_t)M * ldc), y((size_t)M * ldy, 1e30f);
    for (auto& v : x) v = u(rng);
    for (auto& v : b) v = u(rng);
    for (auto& v : c) v = u(rng);
    float beta = addend ? 1.f : 0.f;
    const float* px = x.data(); const unsigned* pq = w.packed.data(); const float* ps = w.scales.data(); const signed char* pz = w.zeros.data();
    const float* pb = bias ? b.data() : nullptr; float* py = y.data(); const float* pc = addend ? c.data() : y.data();
    emu_launch(blocks, 256, [=] {
        switch (M)
        {
            case 1: gemv_int4_f32_m1(px, pq, ps, pz, pb, py, pc, N, K, group, ldx, ldy, ldc, beta); break;
            case 2: gemv_int4_f32_m2(px, pq, ps, pz, pb, py, pc, N, K, group, ldx, ldy, ldc, beta); break;
            case 3: gemv_int4_f32_m3(px, pq, ps, pz, pb, py, pc, N, K, group, ldx, ldy, ldc, beta); break;
            default: gemv_int4_f32_m4(px, pq, ps, pz, pb, py, pc, N, K, group, ldx, ldy, ldc, beta); break;
        }
    });
    double worst = 0; int bad = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++)
        {
            double e = 0, mag = 0;
            for (int k = 0; k < K; k++) { double t = (double)x[m * ldx + k] * w.at(n, k); e += t; mag += std::fabs(t); }
            if (bias) { e += b[n]; mag += std::fabs(b[n]); }
            if (addend) { e += c[m * ldc + n]; mag += std::fabs(c[m * ldc + n]); }
            double err = std::fabs((double)y[m * ldy + n] - e) / std::max(mag, 1e-30);
            worst = std::max(worst, err);
            if (!(err <= 1e-5)) bad++;
        }
    // Padding between rows of y must be untouched.
    for (int m = 0; m < M; m++) for (i64 j = N; j < ldy; j++) if (y[m * ldy + j] != 1e30f) bad++;
    char what[200], detail[64];
    snprintf(what, sizeof what, "gemv_int4_f32 M=%d N=%d K=%d group=%d %s%s%s grid=%u", M, N, K, group, sym ? "sym" : "asym",
             bias ? " bias" : "", addend ? " addend" : "", blocks);
    snprintf(detail, sizeof detail, "worst %.1e ", worst);
    report(what, bad == 0, detail);
}

int main()
{
    std::mt19937 rng(11);
    dequantize_check(rng, 7, 256, 128, false);
    dequantize_check(rng, 5, 96, 64, true);       // a last group of 32
    dequantize_check(rng, 3, 40, 40, false);      // one group a row (per channel), K = 40
    gemv_check(rng, 1, 37, 256, 128, false, true, false, 2);
    gemv_check(rng, 2, 33, 96, 64, true, false, true, 1);
    gemv_check(rng, 3, 9, 512, 32, false, true, true, 4);
    gemv_check(rng, 4, 65, 1024, 128, true, true, false, 3);
    gemv_check(rng, 4, 19, 200, 200, false, false, false, 1);
    gemv_check(rng, 1, 1, 8, 8, false, false, false, 1);
    gemv_check(rng, 2, 11, 128, 16, false, true, false, 2);   // quads whose words fall in two groups (group 16)
    gemv_check(rng, 3, 7, 2048, 64, true, false, true, 1);    // two quads a lane
    return failures;
}
