// FP8 (E4M3) kernels of quantized.cu on the CPU emulation of CUDA: e4m3_from_f and e4m3_to_f against the format's
// definition (every code decoded from its bit fields; a sweep of values encoded to the nearest code by search, ties to the
// even code, saturating at +-448, NaN to 0x7F), and quantize_rows_fp8_f32 (one block a row) against a C++ copy of
// Fp8Quantization.QuantizeRow whose codes come from that search: scales and codes exactly, over rows of magnitudes from
// 1e-6 to 1e3 (their small values reach E4M3's subnormals), a row of zeros (scale 1), a row holding a NaN (scale NaN, codes
// 0), a row stride past the row, K not a multiple of the block. With the RMSNorm prologue the kernel's block sums and rsqrtf
// may round differently from the reference's, so a code may move by one step (counted, at most 1 % of codes), scales 1e-6.
//
// kernels.h is written by the test: the emulation, common.cuh, quantized.cu. Prints one line per check; the exit code is
// the number of failures.
#include "kernels.h"
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

static int failures = 0;
static void report(const std::string& what, bool ok, const std::string& detail = "")
{
    printf("%-64s %s%s\n", what.c_str(), detail.c_str(), ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

// The format's definition and the nearest code by search: cuda_emulation.h's emu_e4m3_definition and emu_e4m3_nearest.
static double definition(int c) { return emu_e4m3_definition(c); }
static unsigned char nearest(float v) { return emu_e4m3_nearest(v); }

// Fp8Quantization.QuantizeRow, the codes by search.
static float reference_row(const float* row, int k, unsigned char* codes)
{
    float mx = 0.f; bool finite = true;
    for (int i = 0; i < k; i++) { finite &= std::isfinite(row[i]); mx = std::fmax(mx, std::fabs(row[i])); }
    if (!finite) { for (int i = 0; i < k; i++) codes[i] = 0; return NAN; }
    float scale = mx / 448.f;
    if (scale == 0.f) scale = 1.f;
    for (int i = 0; i < k; i++) codes[i] = nearest(row[i] / scale);
    return scale;
}

int main()
{
    bool decode = true;
    for (int c = 0; c < 256; c++)
    {
        double d = definition(c); float g = e4m3_to_f((unsigned char)c);
        decode &= std::isnan(d) ? std::isnan(g) : (double)g == d;
    }
    report("e4m3_to_f: every code is its definition's value", decode);

    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    int bad = 0;
    for (int i = 0; i < 200000; i++)
    {
        float v = u(rng) * std::ldexp(1.f, (int)(rng() % 30) - 18);
        if (e4m3_from_f(v) != nearest(v)) bad++;
    }
    for (int c = 0; c < 0x7e; c++)                                   // the midpoints: ties to even
    {
        float mid = (float)((definition(c) + definition(c + 1)) / 2);
        if (e4m3_from_f(mid) != nearest(mid) || e4m3_from_f(-mid) != nearest(-mid)) bad++;
    }
    for (float v : {448.f, 449.f, 464.f, 1e30f, INFINITY, -INFINITY, NAN, 0.f, -0.f, 1e-40f})
        if (e4m3_from_f(v) != nearest(v)) bad++;
    report("e4m3_from_f: sweep, midpoints and special values = nearest code", bad == 0, bad ? std::to_string(bad) + " wrong " : "");

    for (int norm = 0; norm < 2; norm++)
    {
        const int M = 5, K = 1000, LD = 1024, threads = 256;
        std::vector<float> x(M * LD, 7.f), w(K);
        for (int r = 0; r < M; r++)
        {
            float mag = std::ldexp(1.f, (int)(rng() % 30) - 20);
            for (int i = 0; i < K; i++) x[r * LD + i] = u(rng) * mag * std::ldexp(1.f, (int)(rng() % 12) - 6);
        }
        for (int i = 0; i < K; i++) x[2 * LD + i] = 0.f;
        x[3 * LD + 17] = NAN;
        for (int i = 0; i < K; i++) w[i] = 0.5f + u(rng);
        std::vector<unsigned char> codes(M * K);
        std::vector<float> scales(M);
        const float* px = x.data(); const float* pw = norm ? w.data() : nullptr;
        unsigned char* pc = codes.data(); float* ps = scales.data();
        emu_launch(M, threads, [=] { quantize_rows_fp8_f32(px, pw, pc, ps, K, (i64)LD, 1e-5f); });
        int codeDiffs = 0, bigDiffs = 0; bool scalesOk = true;
        for (int r = 0; r < M; r++)
        {
            std::vector<float> row(K);
            double ss = 0;
            for (int i = 0; i < K; i++) ss += (double)x[r * LD + i] * x[r * LD + i];
            float rs = (float)(1 / std::sqrt(ss / K + 1e-5));
            for (int i = 0; i < K; i++) row[i] = norm ? x[r * LD + i] * rs * w[i] : x[r * LD + i];
            std::vector<unsigned char> expected(K);
            float s = reference_row(row.data(), K, expected.data());
            if (std::isnan(s)) scalesOk &= std::isnan(scales[r]);
            else scalesOk &= norm ? std::fabs(scales[r] - s) <= 1e-6f * s : scales[r] == s;
            for (int i = 0; i < K; i++)
                if (codes[r * K + i] != expected[i])
                {
                    codeDiffs++;
                    if (!norm || std::abs((int)(codes[r * K + i] & 0x7f) - (int)(expected[i] & 0x7f)) > 1) bigDiffs++;
                }
        }
        std::string what = std::string("quantize_rows_fp8_f32 M=5 K=1000 ld=1024") + (norm ? " norm" : " exact");
        bool ok = scalesOk && bigDiffs == 0 && (norm ? codeDiffs <= M * K / 100 : codeDiffs == 0);
        report(what, ok, std::to_string(codeDiffs) + " codes differ, scales " + (scalesOk ? "equal " : "differ "));
    }
    return failures;
}
