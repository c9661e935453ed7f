// The skinny-M product kernel (skinny.cu, bf16) on the CPU emulation of CUDA (cuda_emulation.h), its mma.sync on the
// emulation's warp-collective stand-in, against a double reference of the bf16-rounded inputs: batches of 5, 8, 16, 37
// and 64 rows (padded to 8, 16, 64 and 64), W rows past a multiple of 64 (a partial row block), K past a multiple of the
// slice (a last slice of 8 columns), one slice (the warps' own epilogue) and 2 to 4 slices reduced by the last CTA of a
// row block (counters: they must be left at zero), a persistent CTA walking several row blocks, and the epilogues: plain,
// alpha, bias, +residual from another tensor (beta = 1) and in place (r = y). Rows of y past M and strides past N must stay
// untouched. The SwiGLU variant (gate and up rows of one output in one warp's MMA rows) is checked the same way: one slice
// and 2 to 3 slices, a partial row block of outputs, 5 to 64 rows. Prints one line per check; the exit code is the number of failures. kernels.h is written by the test: the
// emulation, common.cuh, skinny.cu.
#include "kernels.h"
#include <algorithm>
#include <random>

Bytes16 skinny_shared[(64 * (512 + 32) * 2) / 16];   // the CTA's slice of x (extern __shared__): 64 rows of up to 512 + 32
static int failures = 0;

static float round_bf16(float v) { return to_f(from_f<bf16>(v)); }

// The output against its reference: the largest error relative to the largest expected value over the M x N outputs;
// whether the rows past M and the columns past N still hold the poison; whether every counter was left at zero (the 8e-3
// tolerance is explained at run below).
struct OutputCheck
{
    double rel;
    bool untouched, zeroed;
    bool ok() const { return rel <= 8e-3 && untouched && zeroed; }
};
static OutputCheck check_output(const std::vector<bf16>& y, const std::vector<double>& expected, int M, int N, int ldy, float poison,
                                const std::vector<int>& counters)
{
    double md = 0, mr = 0;
    bool untouched = true;
    for (int m = 0; m <= M; m++)
        for (int n = 0; n < ldy; n++)
        {
            const size_t i = (size_t)m * ldy + n;
            const float a = to_f(y[i]);
            if (m == M || n >= N) { untouched &= a == poison; continue; }
            if (!std::isfinite(a)) { md = INFINITY; continue; }
            md = std::max(md, std::abs(a - expected[i]));
            mr = std::max(mr, std::abs(expected[i]));
        }
    const bool zeroed = std::all_of(counters.begin(), counters.end(), [](int c) { return c == 0; });
    return {md / (mr > 0 ? mr : 1), untouched, zeroed};
}

// Tolerance: y is rounded to bf16 (2^-8 of a value's binade: 3.9e-3 of the largest output at most); the fp32 sums of
// 256-400 products are ~1e-6 relative. 8e-3 leaves margin; a wrong k order, row, batch row or slice is O(1).
static void run(int M, int N, int K, int ks, int P, bool bias_on, int residual /* 0 none, 1 another tensor, 2 in place */, float alpha)
{
    const int MP = M <= 8 ? 8 : M <= 16 ? 16 : M <= 32 ? 32 : 64;
    const int S = (K + ks - 1) / ks, RB = (N + 63) / 64;
    const int ldy = N + 3, ldr = N + 5, ldx = K + 8, ldw = K + 16;   // strides past the rows: untouched / unread
    const unsigned seed = 1234 + M * 31 + N + K;
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<bf16> x((size_t)M * ldx), w((size_t)N * ldw), b(N), r((size_t)M * ldr), y((size_t)(M + 1) * ldy);
    for (auto& v : x) v = from_f<bf16>(u(rng));
    for (auto& v : w) v = from_f<bf16>(u(rng));
    for (auto& v : b) v = from_f<bf16>(u(rng));
    for (auto& v : r) v = from_f<bf16>(4 * u(rng));
    const float poison = 12288.f;   // exact in bf16
    for (auto& v : y) v = from_f<bf16>(poison);
    if (residual == 2)
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) y[(size_t)m * ldy + n] = r[(size_t)m * ldr + n];
    const float beta = residual ? 1.f : 0.f;

    std::vector<double> expected(y.size(), poison);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++)
        {
            double dot = 0;
            for (int k = 0; k < K; k++) dot += (double)to_f(x[(size_t)m * ldx + k]) * to_f(w[(size_t)n * ldw + k]);
            double v = alpha * dot + (bias_on ? to_f(b[n]) : 0.0) + (residual ? to_f(r[(size_t)m * ldr + n]) : 0.0);
            expected[(size_t)m * ldy + n] = v;
        }

    std::vector<float> partial((size_t)S * MP * RB * 64, NAN);
    std::vector<int> counters(RB, 0);
    emu_shared_base = (unsigned char*)skinny_shared;
    const bf16* px = x.data(); const bf16* pw = w.data();
    const bf16* pb = bias_on ? b.data() : nullptr;
    bf16* py = y.data();
    const bf16* pr = residual == 1 ? r.data() : residual == 2 ? py : nullptr;
    const i64 lr = residual == 1 ? ldr : ldy;
    float* pp = S > 1 ? partial.data() : nullptr;
    int* pc = S > 1 ? counters.data() : nullptr;
    auto launch = [&](auto kernel) {
        emu_launch(dim3{(unsigned)P, (unsigned)S, 1}, 128, [&] { kernel(px, pw, pb, pr, py, pp, pc, M, N, K, (i64)ldx, (i64)ldw, lr, (i64)ldy, ks, alpha, beta); });
    };
    if (MP == 8) launch(skinny_bf16_m8);
    else if (MP == 16) launch(skinny_bf16_m16);
    else if (MP == 32) launch(skinny_bf16_m32);
    else launch(skinny_bf16_m64);

    const OutputCheck c = check_output(y, expected, M, N, ldy, poison, counters);
    const double rel = c.rel;
    const bool untouched = c.untouched, zeroed = c.zeroed, ok = c.ok();
    printf("skinny M=%d (m%d) N=%d K=%d ks=%d slices=%d P=%d%s%s%s seed=%u rel err %.3e%s%s %s\n", M, MP, N, K, ks, S, P,
           bias_on ? " bias" : "", residual == 1 ? " +residual" : residual == 2 ? " +=y" : "", alpha != 1.f ? " alpha" : "",
           seed, rel, untouched ? "" : ", a row or column past the output was written", zeroed ? "" : ", a counter was left nonzero",
           ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

// y (M, F) = SiLU(x Wg^T) * (x Wu^T), Wg and Wu (F, K) with one row stride.
static void run_swiglu(int M, int F, int K, int ks, int P)
{
    const int MP = M <= 8 ? 8 : M <= 16 ? 16 : M <= 32 ? 32 : 64;
    const int S = (K + ks - 1) / ks, RB = (F + 31) / 32;
    const int ldy = F + 3, ldx = K + 8, ldw = K + 16;
    const unsigned seed = 777 + M * 31 + F + K;
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<bf16> x((size_t)M * ldx), wg((size_t)F * ldw), wu((size_t)F * ldw), y((size_t)(M + 1) * ldy);
    for (auto& v : x) v = from_f<bf16>(u(rng));
    for (auto& v : wg) v = from_f<bf16>(0.2f * u(rng));
    for (auto& v : wu) v = from_f<bf16>(0.2f * u(rng));
    const float poison = 12288.f;
    for (auto& v : y) v = from_f<bf16>(poison);
    std::vector<double> expected(y.size(), poison);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < F; n++)
        {
            double g = 0, up = 0;
            for (int k = 0; k < K; k++)
            {
                g += (double)to_f(x[(size_t)m * ldx + k]) * to_f(wg[(size_t)n * ldw + k]);
                up += (double)to_f(x[(size_t)m * ldx + k]) * to_f(wu[(size_t)n * ldw + k]);
            }
            expected[(size_t)m * ldy + n] = g / (1 + std::exp(-g)) * up;
        }
    std::vector<float> partial((size_t)S * MP * RB * 64, NAN);
    std::vector<int> counters(RB, 0);
    emu_shared_base = (unsigned char*)skinny_shared;
    const bf16 *px = x.data(), *pg = wg.data(), *pu = wu.data();
    bf16* py = y.data();
    float* pp = S > 1 ? partial.data() : nullptr;
    int* pc = S > 1 ? counters.data() : nullptr;
    auto launch = [&](auto kernel) {
        emu_launch(dim3{(unsigned)P, (unsigned)S, 1}, 128, [&] { kernel(px, pg, pu, py, pp, pc, M, F, K, (i64)ldx, (i64)ldw, (i64)ldy, ks); });
    };
    if (MP == 8) launch(skinny_swiglu_bf16_m8);
    else if (MP == 16) launch(skinny_swiglu_bf16_m16);
    else if (MP == 32) launch(skinny_swiglu_bf16_m32);
    else launch(skinny_swiglu_bf16_m64);
    const OutputCheck c = check_output(y, expected, M, F, ldy, poison, counters);
    const double rel = c.rel;
    const bool untouched = c.untouched, zeroed = c.zeroed, ok = c.ok();
    printf("skinny swiglu M=%d (m%d) F=%d K=%d ks=%d slices=%d P=%d seed=%u rel err %.3e%s%s %s\n", M, MP, F, K, ks, S, P, seed, rel,
           untouched ? "" : ", a row or column past the output was written", zeroed ? "" : ", a counter was left nonzero", ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

int main()
{
    run(5, 200, 392, 128, 2, true, 1, 1.f);      // 4 slices (the last of 8 columns), a partial row block, 2 row blocks a CTA
    run(8, 64, 256, 256, 1, false, 0, 1.f);      // one slice: the warps' own epilogue
    run(16, 130, 512, 256, 3, false, 2, 0.5f);   // in place (+= y), alpha, 3 row blocks of which the last has 2 rows
    run(37, 96, 384, 128, 1, true, 0, 1.f);      // 37 rows padded to 64, 3 slices, one CTA a slice walking 2 row blocks
    run(64, 64, 256, 128, 1, false, 1, 1.f);     // the full 64 rows, 2 slices, +residual
    run(64, 100, 1024, 512, 2, true, 1, 1.f);    // the widest slice (512: the x slice fills its 64 x 544 buffer), 2 slices
    run(12, 70, 136, 128, 2, false, 0, 1.f);     // 2 slices, the second of 8 columns; 12 rows padded to 16, more CTAs than row blocks
    run_swiglu(5, 100, 256, 256, 2);             // one slice: the warps pair gate and up themselves; 4 row blocks of 32 outputs
    run_swiglu(16, 70, 392, 128, 2);             // 4 slices (the last of 8 columns), a partial row block of 6 outputs
    run_swiglu(64, 64, 384, 128, 1);             // 64 rows, 3 slices, one CTA a slice walking both row blocks
    printf("%s\n", failures ? "FAILURES" : "all ok");
    return failures;
}
