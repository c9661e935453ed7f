// The decode-size products (decode_gemm.cu) in bf16 on the CPU emulation of CUDA (cuda_emulation.h: its stand-ins of
// cp.async, ldmatrix and mma.sync), against a double reference over the bf16-rounded inputs: rows of x from 5 to 64 in
// their three instantiations (8 MT rows), N past a multiple of the 128-row block and odd (a last pair of one output), one
// slice of K and several (a thread-block cluster of the slices, each CTA summing its share of the outputs over every CTA's
// tile in shared memory; emulated with the cluster's CTAs run together), bias, alpha and the residual (beta = 1); the early
// weight loads (before pdl_wait) against the late ones, bit for bit, and the row stride's padding untouched; RMSNorm on
// the way (x's fragments scaled by its weight, 1 / rms on the sums), with one slice and several. Built with -DHOPPER the same
// checks run decode_gemm_hopper.cu (wgmma on the emulation's warpgroup stand-in; hopper.cuh), five more shapes, and its
// tensor-map form (the tensor memory accelerator's copies and transaction barriers emulated) at four, its SwiGLU form at three.
// Without -DHOPPER, the int8-weight form too (decode_gemm_q8_*, CudaBackend.QuantizedMatMul at 5 to 64 rows): int8 values
// over the whole range (-128 .. 127, rows ldw bytes apart past K) with fp32 row scales, against a double reference of
// scales[n] * q[n, k] times the bf16 x; rows of x 5, 17, 33 and 64 (all three instantiations), N short of and past a
// multiple of 128 and odd, one slice and 2, 4 and 8, bias, beta = 1 and an addend (its own row stride). And the int4-weight
// form (decode_gemm_int4_*, QuantizedMatMul over group-wise int4 weights at 5 to 64 rows): packed nibbles (rows ldw words
// apart past K / 8), groups of 32, 64, 128 and a whole row (K = 320: five k-tiles, not a multiple of 128), asymmetric
// zeros, against a double reference over the bf16 x and the weights scale (q - zero) rounded once to bf16 (what the kernel
// makes in registers, as dequantize_int4_bf16 does), same tolerance and checks as the int8 form's.
// kernels.h is written by the test: the emulation, common.cuh, decode_gemm.cuh, decode_gemm.cu. Prints one line per check; the exit code is the
// number of failures.
#include "kernels.h"
#include "emulation_check.h"
#ifdef HOPPER
#define FAMILY "decode_gemm_hopper"
#define PRODUCT decode_gemm_hopper_bf16
#define SWIGLU decode_gemm_hopper_swiglu_bf16
#else
#define FAMILY "decode_gemm"
#define PRODUCT decode_gemm_bf16
#define SWIGLU decode_gemm_swiglu_bf16
#endif
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#ifdef HOPPER
alignas(1024) unsigned char dh_raw[1 << 18];   // 256 KB: the wgmma kernel's stages (101 KB at 64 rows of x) without a cluster
static unsigned char* const shared_base = dh_raw;
#else
float dg_shared[1 << 15];   // 128 KB: the kernel's stages (97 KB at 64 rows of x) when it runs without a cluster
static unsigned char* const shared_base = (unsigned char*)dg_shared;
#endif
// The kernel for x of 8 MT rows.
#define PASTE(a, b) a##b
#define XPASTE(a, b) PASTE(a, b)
#define KERNEL(prefix, MT) XPASTE(prefix, _m##MT)

// Tolerance: the output is stored in bf16 (8 bits of mantissa: 2^-9 relative per value), the products are fp32 sums of
// exact bf16 products; 8e-3 of the largest output leaves margin, and a wrong row, column or slice is O(1).
static void check(const char* what, const std::vector<double>& e, const std::vector<float>& a, double tol)
{
    report_error(what, 56, errors_of(e.data(), a.data(), e.size()).relative(), tol);
}

// Values offset + scale * u with u uniform in [-1, 1), rounded to bf16.
static void fill(std::vector<bf16>& v, std::mt19937& rng, float scale, float offset = 0.f)
{
    std::uniform_real_distribution<float> u(-1, 1);
    for (auto& e : v) e = from_f<bf16>(offset + scale * u(rng));
}

// The grid (slices, row blocks): with several slices each row block's slices are one cluster, as the host launches them.
template <typename F> static void launch_slices(int slices, int blocks, F kernel)
{
    if (slices == 1) emu_launch(dim3{1, (unsigned)blocks, 1}, 128, kernel);
    else emu_launch_cluster(dim3{(unsigned)slices, (unsigned)blocks, 1}, (unsigned)slices, 128, kernel);
}

// The reference's input: x (M rows, ldx apart, K long) as doubles, RMS-normalized (x / rms * nw) when nw is given.
static std::vector<double> reference_input(const std::vector<bf16>& x, int M, int K, int ldx, const std::vector<bf16>* nw, double eps)
{
    std::vector<double> h((size_t)M * K);
    for (int m = 0; m < M; m++)
    {
        double ss = 0;
        for (int k = 0; k < K; k++) ss += (double)to_f(x[(size_t)m * ldx + k]) * to_f(x[(size_t)m * ldx + k]);
        const double r = nw ? 1 / std::sqrt(ss / K + eps) : 1;
        for (int k = 0; k < K; k++) h[(size_t)m * K + k] = to_f(x[(size_t)m * ldx + k]) * r * (nw ? to_f((*nw)[k]) : 1.0);
    }
    return h;
}

// The quantized forms' reference: e (M, N) = h (M, K, the reference input) times weight(n, k) (what the stored weight stands
// for, in double) + bias[n] (when given) + the residual: 0 none, 1 y0 (beta = 1), 2 the addend.
template <typename W>
static std::vector<double> reference_quantized(int M, int N, int K, const std::vector<double>& h, W weight, const std::vector<bf16>* bias,
                                               int residual, const std::vector<bf16>& y0, int ldy, const std::vector<bf16>& add, int ldc)
{
    std::vector<double> e((size_t)M * N);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++)
        {
            double s = 0;
            for (int k = 0; k < K; k++) s += h[(size_t)m * K + k] * weight(n, k);
            const double r = residual == 1 ? to_f(y0[(size_t)m * ldy + n]) : residual == 2 ? to_f(add[(size_t)m * ldc + n]) : 0.0;
            e[(size_t)m * N + n] = s + (bias ? to_f((*bias)[n]) : 0.0) + r;
        }
    return e;
}

static void run(int M, int N, int K, int slices, bool with_bias, float alpha, float beta, bool with_norm = false, bool tma = false)
{
    std::mt19937 rng(5 + M * 3 + N + K + slices);
    const int ldx = K + 8, ldw = K, ldy = N + 8;   // row strides past the rows: the kernel must use them
    std::vector<bf16> x((size_t)M * ldx), w((size_t)N * ldw), bias(N), y0((size_t)M * ldy), nw(K);
    fill(x, rng, 1.f); fill(w, rng, 0.1f); fill(bias, rng, 1.f); fill(y0, rng, 1.f); fill(nw, rng, 0.5f, 1.f);
    const float eps = 1e-5f;
    std::vector<double> e((size_t)M * N), h = reference_input(x, M, K, ldx, with_norm ? &nw : nullptr, eps);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++)
        {
            double s = 0;
            for (int k = 0; k < K; k++) s += h[(size_t)m * K + k] * to_f(w[(size_t)n * ldw + k]);
            e[(size_t)m * N + n] = alpha * s + (with_bias ? to_f(bias[n]) : 0.0) + beta * to_f(y0[(size_t)m * ldy + n]);
        }
    const int MT = M <= 16 ? 2 : M <= 32 ? 4 : 8, blocks = (N + 127) / 128;
    std::vector<float> got[2];
    std::vector<bf16> y[2];
    for (int early = 0; early < 2; early++)
    {
        y[early] = y0;
        const bf16 *px = x.data(), *pw = w.data(), *pb = with_bias ? bias.data() : nullptr;
        bf16* py = y[early].data();
        int m_ = M, n_ = N, k_ = K, ea = early;
        long long lx = ldx, lw = ldw, ly = ldy;
        float al = alpha, be = beta, ep = eps;
        const bf16* pn = with_norm ? nw.data() : nullptr;
        emu_shared_base = shared_base;
        auto launch = [&](auto kernel) { launch_slices(slices, blocks, [&] { kernel(px, pw, pb, py, m_, n_, k_, lx, lw, ly, al, be, ea, pn, ep); }); };
#ifdef HOPPER
        if (tma)
        {
            // The tensor maps the host encodes: W (N rows of K) in boxes of 128 rows, x (M rows of K) in boxes of 8 MT rows.
            TensorMap wm, xm;
            emu_tensor_map_2d(&wm, pw, K, N, (unsigned long long)ldw * 2, 64, 128, 2);
            emu_tensor_map_2d(&xm, px, K, M, (unsigned long long)ldx * 2, 64, 8 * MT, 2);
            auto launch_tma = [&](auto kernel) { launch_slices(slices, blocks, [&] { kernel(px, pw, pb, py, m_, n_, k_, lx, lw, ly, al, be, ea, pn, ep, wm, xm); }); };
            if (MT == 2) launch_tma(decode_gemm_hopper_tma_bf16_m2);
            else if (MT == 4) launch_tma(decode_gemm_hopper_tma_bf16_m4);
            else launch_tma(decode_gemm_hopper_tma_bf16_m8);
        }
        else
#endif
        if (MT == 2) launch(KERNEL(PRODUCT, 2));
        else if (MT == 4) launch(KERNEL(PRODUCT, 4));
        else launch(KERNEL(PRODUCT, 8));
        got[early].resize((size_t)M * N);
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) got[early][(size_t)m * N + n] = to_f(y[early][(size_t)m * ldy + n]);
    }
    char name[120];
    snprintf(name, sizeof name, "%s M=%d N=%d K=%d slices=%d bias=%d beta=%g%s%s", FAMILY, M, N, K, slices, with_bias ? 1 : 0, beta,
             with_norm ? " norm" : "", tma ? " tma" : "");
    check(name, e, got[1], 8e-3);
    bool same = got[0] == got[1];
    bool pads = true;   // the row stride's padding past N is untouched
    for (int m = 0; m < M; m++)
        for (int n = N; n < ldy; n++) pads &= y[1][(size_t)m * ldy + n].x == y0[(size_t)m * ldy + n].x;
    printf("%-56s %s\n", (std::string(name) + ": early = late, pads").c_str(), same && pads ? "ok" : "FAIL");
    if (!(same && pads)) failures++;
}

// The SwiGLU form: y (M, F) = SiLU(x Wg^T + bg) * (x Wu^T + bu), gate and up weights in separate arrays of one row stride.
static void run_swiglu(int M, int F, int K, int slices, bool with_bias, bool with_norm = false, bool tma = false)
{
    std::mt19937 rng(7 + M * 5 + F + K + slices);
    const int ldx = K, ldw = K + 16, ldy = F;
    std::vector<bf16> x((size_t)M * ldx), wg((size_t)F * ldw), wu((size_t)F * ldw), bg(F), bu(F), y((size_t)M * ldy), nw(K);
    fill(x, rng, 1.f); fill(wg, rng, 0.1f); fill(wu, rng, 0.1f); fill(bg, rng, 1.f); fill(bu, rng, 1.f); fill(nw, rng, 0.5f, 1.f);
    const float eps = 1e-5f;
    std::vector<double> e((size_t)M * F), hx = reference_input(x, M, K, ldx, with_norm ? &nw : nullptr, eps);
    for (int m = 0; m < M; m++)
        for (int o = 0; o < F; o++)
        {
            double g = with_bias ? to_f(bg[o]) : 0.0, h = with_bias ? to_f(bu[o]) : 0.0;
            for (int k = 0; k < K; k++)
            {
                g += hx[(size_t)m * K + k] * to_f(wg[(size_t)o * ldw + k]);
                h += hx[(size_t)m * K + k] * to_f(wu[(size_t)o * ldw + k]);
            }
            e[(size_t)m * F + o] = g / (1 + std::exp(-g)) * h;
        }
    const int MT = M <= 16 ? 2 : M <= 32 ? 4 : 8, blocks = (F + 63) / 64;
    const bf16 *px = x.data(), *pg = wg.data(), *pu = wu.data(), *pbg = with_bias ? bg.data() : nullptr, *pbu = with_bias ? bu.data() : nullptr;
    const bf16* pn = with_norm ? nw.data() : nullptr;
    float ep = eps;
    bf16* py = y.data();
    int m_ = M, f_ = F, k_ = K, early = 1;
    long long lx = ldx, lw = ldw, ly = ldy;
    emu_shared_base = shared_base;
    auto launch = [&](auto kernel) { launch_slices(slices, blocks, [&] { kernel(px, pg, pu, pbg, pbu, py, m_, f_, k_, lx, lw, ly, early, pn, ep); }); };
#ifdef HOPPER
    if (tma)
    {
        // The host's maps: the gate and up weights (F rows of K each) in boxes of 64 rows, x in boxes of 8 MT rows.
        TensorMap gm, um, xm;
        emu_tensor_map_2d(&gm, pg, K, F, (unsigned long long)ldw * 2, 64, 64, 2);
        emu_tensor_map_2d(&um, pu, K, F, (unsigned long long)ldw * 2, 64, 64, 2);
        emu_tensor_map_2d(&xm, px, K, M, (unsigned long long)ldx * 2, 64, 8 * MT, 2);
        auto launch_tma = [&](auto kernel) { launch_slices(slices, blocks, [&] { kernel(px, pg, pu, pbg, pbu, py, m_, f_, k_, lx, lw, ly, early, pn, ep, gm, um, xm); }); };
        if (MT == 2) launch_tma(decode_gemm_hopper_tma_swiglu_bf16_m2);
        else if (MT == 4) launch_tma(decode_gemm_hopper_tma_swiglu_bf16_m4);
        else launch_tma(decode_gemm_hopper_tma_swiglu_bf16_m8);
    }
    else
#endif
    if (MT == 2) launch(KERNEL(SWIGLU, 2));
    else if (MT == 4) launch(KERNEL(SWIGLU, 4));
    else launch(KERNEL(SWIGLU, 8));
    std::vector<float> got((size_t)M * F);
    for (size_t i = 0; i < got.size(); i++) got[i] = to_f(y[i]);
    char name[120];
    snprintf(name, sizeof name, "%s swiglu M=%d F=%d K=%d slices=%d bias=%d%s%s", FAMILY, M, F, K, slices, with_bias ? 1 : 0,
             with_norm ? " norm" : "", tma ? " tma" : "");
    check(name, e, got, 8e-3);
}

#ifndef HOPPER
// The int8-weight form: y (M, N) = scales[n] * (x q_n) + bias[n] + beta * y0, or + addend (residual 2: c_in is the addend,
// ldc apart, beta 1). The reference sums in double over the bf16 x and the exact weights scales[n] * q[n, k]. Tolerance as
// the 16-bit form's, 8e-3 of the largest output: the output is stored in bf16 (2^-9 relative), the products of a bf16 value
// and an int8 value are exact in fp32 (16 significant bits at most), and their fp32 sums over at most 1,024 terms and the
// one fp32 multiply by the scale add far less; a wrong row, column, slice, scale or k permutation is O(1).
static void run_q8(int M, int N, int K, int slices, bool with_bias, int residual, bool with_norm = false)
{
    std::mt19937 rng(11 + M * 7 + N + K + slices + residual);
    const int ldx = K + 8, ldw = K + 16, ldy = N + 8, ldc = N + 4;   // row strides past the rows: the kernel must use them
    std::vector<bf16> x((size_t)M * ldx), bias(N), y0((size_t)M * ldy), add((size_t)M * ldc), nw(K);
    std::vector<signed char> q((size_t)N * ldw);
    std::vector<float> scales(N);
    fill(x, rng, 1.f); fill(bias, rng, 1.f); fill(y0, rng, 1.f); fill(add, rng, 1.f);
    if (with_norm) fill(nw, rng, 0.5f, 1.f);
    const float eps = 1e-5f;
    std::uniform_int_distribution<int> qd(-128, 127);
    std::uniform_real_distribution<float> sd(0.2f / 127, 1.f / 127);
    for (auto& v : q) v = (signed char)qd(rng);
    for (auto& v : scales) v = sd(rng);
    scales[N / 2] = 0.f;                                    // an all-zero row quantizes to scale 0
    const float beta = residual == 0 ? 0.f : 1.f;
    const std::vector<double> h = reference_input(x, M, K, ldx, with_norm ? &nw : nullptr, eps);
    const std::vector<double> e = reference_quantized(M, N, K, h, [&](int n, int k) { return (double)scales[n] * q[(size_t)n * ldw + k]; },
                                                      with_bias ? &bias : nullptr, residual, y0, ldy, add, ldc);
    const int MT = M <= 16 ? 2 : M <= 32 ? 4 : 8, blocks = (N + 127) / 128;
    std::vector<float> got[2];
    std::vector<bf16> y[2];
    for (int early = 0; early < 2; early++)
    {
        y[early] = y0;
        const bf16 *px = x.data(), *pb = with_bias ? bias.data() : nullptr;
        const signed char* pq = q.data();
        const float* ps = scales.data();
        bf16* py = y[early].data();
        const bf16* pc = residual == 2 ? add.data() : py;
        int m_ = M, n_ = N, k_ = K, ea = early;
        long long lx = ldx, lw = ldw, ly = ldy, lc = residual == 2 ? ldc : ldy;
        float be = beta;
        emu_shared_base = shared_base;
        const bf16* pn = with_norm ? nw.data() : nullptr;
        auto launch = [&](auto kernel) { launch_slices(slices, blocks, [&] { kernel(px, pq, ps, pb, py, pc, m_, n_, k_, lx, lw, ly, lc, be, ea, pn, eps); }); };
        if (MT == 2) launch(decode_gemm_q8_bf16_m2);
        else if (MT == 4) launch(decode_gemm_q8_bf16_m4);
        else launch(decode_gemm_q8_bf16_m8);
        got[early].resize((size_t)M * N);
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) got[early][(size_t)m * N + n] = to_f(y[early][(size_t)m * ldy + n]);
    }
    char name[120];
    snprintf(name, sizeof name, "decode_gemm_q8 M=%d N=%d K=%d slices=%d bias=%d %s%s", M, N, K, slices, with_bias ? 1 : 0,
             residual == 0 ? "beta=0" : residual == 1 ? "beta=1" : "addend", with_norm ? " norm" : "");
    check(name, e, got[1], 8e-3);
    bool same = got[0] == got[1];
    bool pads = true;   // the row stride's padding past N is untouched
    for (int m = 0; m < M; m++)
        for (int n = N; n < ldy; n++) pads &= y[1][(size_t)m * ldy + n].x == y0[(size_t)m * ldy + n].x;
    bool zero_row = true;   // the scale-0 row is the bias and the residual alone
    for (int m = 0; m < M; m++) zero_row &= std::abs(got[1][(size_t)m * N + N / 2] - e[(size_t)m * N + N / 2]) <= 8e-3 * (1 + std::abs(e[(size_t)m * N + N / 2]));
    printf("%-56s %s\n", (std::string(name) + ": early = late, pads").c_str(), same && pads && zero_row ? "ok" : "FAIL");
    if (!(same && pads && zero_row)) failures++;
}

// The int8 SwiGLU form (decode_gemm_q8_swiglu_*): y (M, F) = SiLU(sg[o] (x qg_o) + bg) * (su[o] (x qu_o) + bu), two int8
// weights with their row scales, against a double reference; the 16-bit SwiGLU form's tolerance.
static void run_q8_swiglu(int M, int F, int K, int slices, bool with_bias, bool with_norm = false)
{
    std::mt19937 rng(41 + M * 5 + F + K + slices);
    const int ldx = K + 8, ldw = K + 16, ldy = F;
    std::vector<bf16> x((size_t)M * ldx), bg(F), bu(F), y((size_t)M * ldy), nw(K);
    fill(x, rng, 1.f); fill(bg, rng, 1.f); fill(bu, rng, 1.f); fill(nw, rng, 0.5f, 1.f);
    const float eps = 1e-5f;
    const std::vector<double> hx = reference_input(x, M, K, ldx, with_norm ? &nw : nullptr, eps);
    std::uniform_int_distribution<int> qd(-128, 127);
    std::uniform_real_distribution<float> sd(0.2f / 127, 1.f / 127);
    std::vector<signed char> qg((size_t)F * ldw), qu((size_t)F * ldw);
    std::vector<float> sg(F), su(F);
    for (auto& v : qg) v = (signed char)qd(rng);
    for (auto& v : qu) v = (signed char)qd(rng);
    for (auto& v : sg) v = sd(rng);
    for (auto& v : su) v = sd(rng);
    std::vector<double> e((size_t)M * F);
    for (int m = 0; m < M; m++)
        for (int o = 0; o < F; o++)
        {
            double g = 0, u = 0;
            for (int k = 0; k < K; k++)
            {
                g += hx[(size_t)m * K + k] * qg[(size_t)o * ldw + k];
                u += hx[(size_t)m * K + k] * qu[(size_t)o * ldw + k];
            }
            g = sg[o] * g + (with_bias ? to_f(bg[o]) : 0.0);
            u = su[o] * u + (with_bias ? to_f(bu[o]) : 0.0);
            e[(size_t)m * F + o] = g / (1 + std::exp(-g)) * u;
        }
    const int MT = M <= 16 ? 2 : M <= 32 ? 4 : 8, blocks = (F + 63) / 64;
    const bf16 *px = x.data(), *pbg = with_bias ? bg.data() : nullptr, *pbu = with_bias ? bu.data() : nullptr;
    const signed char *pg = qg.data(), *pu = qu.data();
    const float *psg = sg.data(), *psu = su.data();
    bf16* py = y.data();
    int m_ = M, f_ = F, k_ = K, early = 1;
    long long lx = ldx, lw = ldw, ly = ldy;
    emu_shared_base = shared_base;
    const bf16* pn = with_norm ? nw.data() : nullptr;
    auto launch = [&](auto kernel) { launch_slices(slices, blocks, [&] { kernel(px, pg, pu, psg, psu, pbg, pbu, py, m_, f_, k_, lx, lw, ly, early, pn, eps); }); };
    if (MT == 2) launch(decode_gemm_q8_swiglu_bf16_m2);
    else if (MT == 4) launch(decode_gemm_q8_swiglu_bf16_m4);
    else launch(decode_gemm_q8_swiglu_bf16_m8);
    std::vector<float> got((size_t)M * F);
    for (size_t i = 0; i < got.size(); i++) got[i] = to_f(y[i]);
    char name[120];
    snprintf(name, sizeof name, "decode_gemm_q8 swiglu M=%d F=%d K=%d slices=%d bias=%d%s", M, F, K, slices, with_bias ? 1 : 0,
             with_norm ? " norm" : "");
    check(name, e, got, 8e-3);
}

// A random group-wise int4 weight (N, K): nibbles q uniform in 0 .. 15, packed (rows ldw words apart past K / 8), scales
// (N, G) in [0.01, 0.1), asymmetric zeros (N, G) in 0 .. 15.
struct Int4Weight
{
    int K, group, G;
    std::vector<int> q;
    std::vector<unsigned> packed;
    std::vector<float> scales;
    std::vector<signed char> zeros;
    Int4Weight(int N, int K_, int group_, int ldw, std::mt19937& rng)
        : K(K_), group(group_), G((K_ + group_ - 1) / group_), q((size_t)N * K_), packed((size_t)N * ldw, 0u), scales((size_t)N * G), zeros((size_t)N * G)
    {
        std::uniform_real_distribution<float> sd(0.01f, 0.1f);
        for (auto& v : q) v = (int)(rng() % 16);
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++) packed[(size_t)n * ldw + k / 8] |= (unsigned)q[(size_t)n * K + k] << (4 * (k % 8));
        for (auto& v : scales) v = sd(rng);
        for (auto& v : zeros) v = (signed char)(rng() % 16);
    }
    // What element (n, k) stands for: scales (q - zero) of its group, exactly (in fp32 for the rounded form's callers).
    double exact(int n, int k) const
    {
        const size_t gi = (size_t)n * G + k / group;
        return (double)scales[gi] * (q[(size_t)n * K + k] - zeros[gi]);
    }
};

// The int4-weight form: y (M, N) = x W^T + bias[n] + beta * y0, or + addend, W[n, k] = bf16(scales[n, g] (q - zeros[n, g]));
// gs: the form by group sums (decode_gemm_int4g_*), whose weights are scales[n, g] (q - zeros[n, g]) exactly.
// with_norm: x RMS-normalized on the way, as the 16-bit form's reference.
static void run_q4(int M, int N, int K, int group, int slices, bool with_bias, int residual, bool gs = false, bool with_norm = false,
                   bool stages8 = false, int jb = 1)
{
    std::mt19937 rng(23 + M * 7 + N + K + group + slices + residual);
    const int ldx = K + 8, ldw = K / 8 + 4, ldy = N + 8, ldc = N + 4, G = (K + group - 1) / group;
    std::vector<bf16> x((size_t)M * ldx), bias(N), y0((size_t)M * ldy), add((size_t)M * ldc), nw(K);
    fill(x, rng, 1.f); fill(bias, rng, 1.f); fill(y0, rng, 1.f); fill(add, rng, 1.f); fill(nw, rng, 0.5f, 1.f);
    const float eps = 1e-5f;
    const std::vector<double> h = reference_input(x, M, K, ldx, with_norm ? &nw : nullptr, eps);
    const Int4Weight wq(N, K, group, ldw, rng);
    const std::vector<unsigned>& packed = wq.packed;
    const std::vector<float>& scales = wq.scales;
    const std::vector<signed char>& zeros = wq.zeros;
    auto weight = [&](int n, int k) { return gs ? wq.exact(n, k) : (double)to_f(from_f<bf16>((float)wq.exact(n, k))); };
    const float beta = residual == 0 ? 0.f : 1.f;
    const std::vector<double> e = reference_quantized(M, N, K, h, weight, with_bias ? &bias : nullptr, residual, y0, ldy, add, ldc);
    const int MT = M <= 16 ? 2 : M <= 32 ? 4 : 8, blocks = (N + 127) / 128;
    std::vector<float> got[2];
    std::vector<bf16> y[2];
    for (int early = 0; early < 2; early++)
    {
        y[early] = y0;
        const bf16 *px = x.data(), *pb = with_bias ? bias.data() : nullptr;
        const unsigned* pq = packed.data();
        const float* ps = scales.data();
        const signed char* pz = zeros.data();
        bf16* py = y[early].data();
        const bf16* pc = residual == 2 ? add.data() : py;
        int m_ = M, n_ = N, k_ = K, g_ = group, ea = early;
        long long lx = ldx, lw = ldw, ly = ldy, lc = residual == 2 ? ldc : ldy;
        float be = beta;
        emu_shared_base = shared_base;
        const bf16* pn = with_norm ? nw.data() : nullptr;
        auto launch = [&](auto kernel) { launch_slices(slices, blocks, [&] { kernel(px, pq, ps, pz, pb, py, pc, m_, n_, k_, g_, lx, lw, ly, lc, be, ea, pn, eps); }); };
        auto launch_gs = [&](auto kernel) {
            launch_slices(slices, blocks, [&] { kernel(px, pq, ps, pz, pb, py, pc, m_, n_, k_, g_, lx, lw, ly, lc, be, ea, pn, eps); });
        };
        if (gs && stages8) { if (MT == 2) launch_gs(decode_gemm_int4g_bf16_m2_s8); else if (MT == 4) launch_gs(decode_gemm_int4g_bf16_m4_s8); else launch_gs(decode_gemm_int4g_bf16_m8_s8); }
        else if (gs && (jb == 2 || (jb == 4 && MT == 2))) { if (MT == 2) launch_gs(decode_gemm_int4g_bf16_m2_j2); else if (MT == 4) launch_gs(decode_gemm_int4g_bf16_m4_j2); else launch_gs(decode_gemm_int4g_bf16_m8_j2); }
        else if (gs && jb == 4) { if (MT == 4) launch_gs(decode_gemm_int4g_bf16_m4_j4); else launch_gs(decode_gemm_int4g_bf16_m8_j4); }
        else if (gs) { if (MT == 2) launch_gs(decode_gemm_int4g_bf16_m2); else if (MT == 4) launch_gs(decode_gemm_int4g_bf16_m4); else launch_gs(decode_gemm_int4g_bf16_m8); }
        else if (MT == 2) launch(decode_gemm_int4_bf16_m2);
        else if (MT == 4) launch(decode_gemm_int4_bf16_m4);
        else launch(decode_gemm_int4_bf16_m8);
        got[early].resize((size_t)M * N);
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) got[early][(size_t)m * N + n] = to_f(y[early][(size_t)m * ldy + n]);
    }
    char name[120];
    snprintf(name, sizeof name, "decode_gemm_int4%s M=%d N=%d K=%d group=%d slices=%d bias=%d %s%s%s%s", gs ? "g" : "", M, N, K, group, slices,
             with_bias ? 1 : 0, residual == 0 ? "beta=0" : residual == 1 ? "beta=1" : "addend", with_norm ? " norm" : "", stages8 ? " s8" : "",
             jb == 2 ? " j2" : jb == 4 ? " j4" : "");
    check(name, e, got[1], 8e-3);
    bool same = got[0] == got[1];
    bool pads = true;
    for (int m = 0; m < M; m++)
        for (int n = N; n < ldy; n++) pads &= y[1][(size_t)m * ldy + n].x == y0[(size_t)m * ldy + n].x;
    printf("%-56s %s\n", (std::string(name) + ": early = late, pads").c_str(), same && pads ? "ok" : "FAIL");
    if (!(same && pads)) failures++;
}

// The int4 SwiGLU form by group sums (decode_gemm_int4g_swiglu_*): y (M, F) = SiLU(x Wg^T + bg) * (x Wu^T + bu), two int4
// weights of one group and row stride, each with its own scales and zeros, against a double reference over the exact
// weights; the same tolerance as the 16-bit SwiGLU form (the output stored in bf16, SiLU on fp32 sums).
static void run_q4_swiglu(int M, int F, int K, int group, int slices, bool with_bias, bool with_norm, bool stages8 = false, int jb = 1)
{
    std::mt19937 rng(31 + M * 5 + F + K + group + slices);
    const int ldx = K + 8, ldw = K / 8 + 4, ldy = F;
    std::vector<bf16> x((size_t)M * ldx), bg(F), bu(F), y((size_t)M * ldy), nw(K);
    fill(x, rng, 1.f); fill(bg, rng, 1.f); fill(bu, rng, 1.f); fill(nw, rng, 0.5f, 1.f);
    const Int4Weight wg(F, K, group, ldw, rng), wu(F, K, group, ldw, rng);
    const float eps = 1e-5f;
    const std::vector<double> hx = reference_input(x, M, K, ldx, with_norm ? &nw : nullptr, eps);
    std::vector<double> e((size_t)M * F);
    for (int m = 0; m < M; m++)
        for (int o = 0; o < F; o++)
        {
            double g = with_bias ? to_f(bg[o]) : 0.0, u = with_bias ? to_f(bu[o]) : 0.0;
            for (int k = 0; k < K; k++)
            {
                g += hx[(size_t)m * K + k] * wg.exact(o, k);
                u += hx[(size_t)m * K + k] * wu.exact(o, k);
            }
            e[(size_t)m * F + o] = g / (1 + std::exp(-g)) * u;
        }
    const int MT = M <= 16 ? 2 : M <= 32 ? 4 : 8, blocks = (F + 63) / 64;
    const bf16 *px = x.data(), *pbg = with_bias ? bg.data() : nullptr, *pbu = with_bias ? bu.data() : nullptr;
    const bf16* pn = with_norm ? nw.data() : nullptr;
    const unsigned *pg = wg.packed.data(), *pu = wu.packed.data();
    const float *sg = wg.scales.data(), *su = wu.scales.data();
    const signed char *zg = wg.zeros.data(), *zu = wu.zeros.data();
    float ep = eps;
    bf16* py = y.data();
    int m_ = M, f_ = F, k_ = K, g_ = group, early = 1;
    long long lx = ldx, lw = ldw, ly = ldy;
    emu_shared_base = shared_base;
    auto launch = [&](auto kernel) {
        launch_slices(slices, blocks, [&] { kernel(px, pg, pu, sg, su, zg, zu, pbg, pbu, py, m_, f_, k_, g_, lx, lw, ly, early, pn, ep); });
    };
    if (stages8) { if (MT == 2) launch(decode_gemm_int4g_swiglu_bf16_m2_s8); else if (MT == 4) launch(decode_gemm_int4g_swiglu_bf16_m4_s8); else launch(decode_gemm_int4g_swiglu_bf16_m8_s8); }
    else if (jb == 2 || (jb == 4 && MT == 2)) { if (MT == 2) launch(decode_gemm_int4g_swiglu_bf16_m2_j2); else if (MT == 4) launch(decode_gemm_int4g_swiglu_bf16_m4_j2); else launch(decode_gemm_int4g_swiglu_bf16_m8_j2); }
    else if (jb == 4) { if (MT == 4) launch(decode_gemm_int4g_swiglu_bf16_m4_j4); else launch(decode_gemm_int4g_swiglu_bf16_m8_j4); }
    else if (MT == 2) launch(decode_gemm_int4g_swiglu_bf16_m2);
    else if (MT == 4) launch(decode_gemm_int4g_swiglu_bf16_m4);
    else launch(decode_gemm_int4g_swiglu_bf16_m8);
    std::vector<float> got((size_t)M * F);
    for (size_t i = 0; i < got.size(); i++) got[i] = to_f(y[i]);
    char name[120];
    snprintf(name, sizeof name, "decode_gemm_int4g swiglu M=%d F=%d K=%d group=%d slices=%d bias=%d%s%s%s", M, F, K, group, slices,
             with_bias ? 1 : 0, with_norm ? " norm" : "", stages8 ? " s8" : "", jb == 2 ? " j2" : jb == 4 ? " j4" : "");
    check(name, e, got, 8e-3);
}
#endif

int main()
{
    run(5, 100, 256, 1, true, 1.f, 0.f);      // 8 x-rows padded to 16 (MT 2); N short of one block of 128; 4 k-tiles, 4 stages
    run(64, 300, 512, 4, false, 1.f, 1.f);     // the 64-row decode step's batch; 3 row blocks; 4 slices of 2 k-tiles; the residual
    run(17, 64, 128, 2, true, 0.5f, 1.f);      // MT 4; slices of one k-tile (fewer tiles than stages); alpha
    run(32, 130, 64, 1, false, 1.f, 0.f);      // one k-tile; 2 row blocks, the last with 2 rows
    run(48, 128, 1024, 8, true, 1.f, 1.f);     // 8 slices of 2 k-tiles, as the host splits llama-1b's output product
    run(40, 129, 256, 2, true, 1.f, 0.f);      // N odd: the last pair of a CTA's share has one output
    run_swiglu(17, 100, 256, 1, true);         // 2 row blocks of 64 outputs, the last with 36; gate and up biases
    run_swiglu(64, 64, 512, 4, false);         // 4 slices: each CTA pairs the gate and up sums of its share
    run_swiglu(5, 40, 128, 2, true);           // 8 x-rows padded to 16; 2 slices of one k-tile
    run(64, 128, 512, 4, true, 1.f, 0.f, true);   // RMSNorm on the way: every slice's sums of squares read across the cluster
    run(9, 64, 256, 1, false, 1.f, 1.f, true);    // one slice: the CTA's own sums (warps 0 and 1 sum x's two n8 tiles)
    run_swiglu(33, 65, 256, 2, false, true);      // the SwiGLU form normalized, F odd; 8 n8 tiles over 4 warps
#ifndef HOPPER
    run_q8(5, 100, 256, 1, true, 0);       // 8 x-rows padded to 16 (MT 2); N short of one block; 4 k-tiles, 4 stages
    run_q8(17, 300, 512, 4, true, 1);      // MT 4; 3 row blocks; 4 slices of 2 k-tiles (a cluster); beta = 1
    run_q8(64, 129, 1024, 8, false, 2);    // the 64-row batch; N odd (a last pair of one output); 8 slices; the addend
    run_q8(64, 200, 512, 1, true, 2);      // one slice of 8 k-tiles: the stages refilled; bias and addend
    run_q8(33, 130, 128, 2, false, 1);     // MT 8 with 33 rows; slices of one k-tile (fewer tiles than stages)
    run_q8_swiglu(17, 100, 256, 1, true);  // MT 4; 2 row blocks of 64 outputs, the last with 36; each row's scale in the epilogue
    run_q8_swiglu(64, 65, 512, 4, false);  // MT 8; F odd; 4 slices: the cluster's gate and up sums, then the scales
    run_q8_swiglu(5, 130, 1024, 8, true);  // MT 2; 3 row blocks; 8 slices
    // The int8 and int4 forms normalizing x on the way (norm_x_columns): one slice (the CTA's own sums) and clusters.
    run_q8(9, 100, 256, 1, true, 0, true);
    run_q8(64, 129, 1024, 8, false, 2, true);
    run_q8_swiglu(33, 65, 512, 4, true, true);
    run_q4(17, 300, 512, 32, 4, true, 1, false, true);   // the int4 form of groups of 32 (weights scaled), normalized
    run_q4(40, 64, 768, 48, 1, false, 2, false, true);
    run_q4(5, 100, 256, 128, 1, true, 0);      // MT 2; N short of one block; 4 k-tiles, 4 stages
    run_q4(17, 300, 512, 32, 4, true, 1);      // MT 4; 3 row blocks; 4 slices (a cluster); groups of 32; beta = 1
    run_q4(64, 129, 1024, 128, 8, false, 2);   // the 64-row batch; N odd; 8 slices; the addend
    run_q4(64, 200, 320, 64, 1, true, 2);      // K = 320 (5 k-tiles, not a multiple of 128): the stages refilled; groups of 64
    run_q4(33, 130, 320, 320, 5, false, 1);    // MT 8 with 33 rows; one group a row; 5 slices of one k-tile
    // The form by group sums: a group a k-tile (the sums scaled every tile), two (every other), a whole row (once, at the
    // slice's end), groups straddling slices (scaled at the slice's end and again at the group's), two groups a slice; N x G
    // not a multiple of 4 (the last zero word read in part).
    run_q4(5, 100, 256, 128, 1, true, 0, true);      // MT 2; N short of one block; 2 groups of 2 k-tiles, 4 stages
    run_q4(17, 300, 512, 64, 4, true, 1, true);      // MT 4; 3 row blocks; 4 slices (a cluster); a group a k-tile; beta = 1
    run_q4(64, 129, 1024, 128, 8, false, 2, true);   // the 64-row batch; N odd; 8 slices of a group each; the addend
    run_q4(64, 129, 320, 320, 1, true, 2, true);     // one group a row (N x G = 129 bytes of zeros); 5 k-tiles, stages refilled
    run_q4(33, 130, 768, 256, 4, false, 1, true);    // MT 8 with 33 rows; slices of 3 k-tiles: groups straddle slices
    run_q4(48, 200, 1024, 256, 2, true, 0, true);    // two groups a slice of 8 k-tiles
    run_q4(64, 300, 1024, 128, 8, true, 0, true, true);   // normalized: every slice's sums of squares across the cluster
    run_q4(9, 129, 512, 128, 1, false, 1, true, true);     // normalized, one slice: the CTA's own sums (MT 2: warps 0 and 1)
    run_q4(40, 64, 768, 256, 3, false, 2, true, true);     // normalized, MT 8 over 3 slices; groups straddle slices
    run_q4(17, 300, 512, 64, 4, true, 1, true, true);      // normalized, MT 4, 4 slices, a group a k-tile
    // Its SwiGLU form: gate and up rows interleaved by 8 in a tile, each row's scale and zero word from its own weight.
    run_q4_swiglu(17, 100, 256, 128, 1, true, false);     // MT 4; 2 row blocks of 64 outputs, the last with 36; F x G odd
    run_q4_swiglu(64, 64, 512, 64, 4, false, true);       // normalized; 4 slices, a group a k-tile: the cluster's gate and up sums
    run_q4_swiglu(5, 65, 768, 256, 3, true, true);        // MT 2; F odd; groups straddle slices; the last zero word in part
    run_q4_swiglu(40, 130, 1024, 128, 8, false, false);   // MT 8; 3 row blocks; 8 slices of a group each
    // Eight stages (_s8): more k-tiles a slice than stages (the ring refilled), fewer (the prologue alone), one slice and a cluster.
    run_q4(64, 300, 2048, 128, 1, true, 0, true, true, true);    // MT 8, 32 k-tiles in one slice, normalized
    run_q4(9, 129, 512, 64, 2, false, 1, true, false, true);     // MT 2, 4 k-tiles a slice of 8 stages
    run_q4(33, 130, 1024, 256, 1, false, 2, true, false, true);  // MT 8, 16 k-tiles, groups of 4 k-tiles, the addend
    run_q4_swiglu(17, 100, 2048, 128, 2, true, true, true);      // MT 4, 16 k-tiles a slice
    // Two and four of x's n8 tiles at once (_j2, _j4): every MT (the 16-row kernel takes _j2 for both), normalized (each
    // tile's squares in its own warp), a cluster, groups straddling slices.
    run_q4(5, 100, 256, 128, 1, true, 0, true, false, false, 2);       // MT 2, j2
    run_q4(9, 129, 512, 128, 1, false, 1, true, true, false, 4);       // MT 2 asked j4: the _j2 kernel; normalized
    run_q4(17, 300, 512, 64, 4, true, 1, true, true, false, 2);        // MT 4, j2, normalized, 4 slices
    run_q4(33, 130, 768, 256, 4, false, 1, true, false, false, 4);     // MT 8, j4, groups straddle slices
    run_q4(64, 129, 1024, 128, 8, false, 2, true, true, false, 4);     // MT 8, j4, normalized, 8 slices, the addend
    run_q4(64, 300, 2048, 128, 1, true, 0, true, false, false, 2);     // MT 8, j2, 32 k-tiles in one slice
    run_q4_swiglu(17, 100, 256, 128, 1, true, false, false, 4);        // MT 4, j4
    run_q4_swiglu(40, 130, 1024, 128, 8, false, true, false, 2);       // MT 8, j2, normalized, 8 slices
    run_q4_swiglu(64, 64, 512, 64, 4, true, true, false, 4);           // MT 8, j4, normalized, 4 slices
#endif
#ifdef HOPPER
    run(64, 300, 1024, 2, true, 1.f, 1.f, true);   // 16 k-tiles in 2 slices, normalized, 3 row blocks
    run(9, 130, 512, 1, false, 1.f, 0.f);          // 8 k-tiles in one slice: the stages refilled twice
    run(48, 128, 1024, 2, false, 0.5f, 1.f, true);
    run_swiglu(64, 100, 512, 2, true, true);
    run_swiglu(17, 64, 512, 1, false, false);
    // The tensor-map form: W and x by the tensor memory accelerator's emulation (boxes, zero fill past the tensor, the
    // 128-byte swizzle), each stage behind its transaction barrier's phase.
    run(5, 100, 256, 1, true, 1.f, 0.f, false, true);      // x's rows past 5 and W's past 100 zero-filled; 4 k-tiles, 4 stages
    run(64, 300, 512, 4, false, 1.f, 1.f, false, true);    // 3 row blocks, 4 slices in a cluster, the residual
    run(48, 128, 1024, 8, true, 1.f, 1.f, true, true);     // 8 slices, normalized: the norm weight's bulk copy
    run(9, 130, 1024, 1, false, 0.5f, 0.f, true, true);    // 16 k-tiles in one slice: every barrier through four phases
    // Its SwiGLU form: the gate's and the up weight's boxes of 64 rows side by side in a stage.
    run_swiglu(17, 100, 256, 1, true, false, true);         // 2 row blocks, the last with 36 outputs (the rest zero-filled)
    run_swiglu(64, 64, 512, 4, false, true, true);          // 4 slices, normalized: the cluster's gate and up sums
    run_swiglu(33, 65, 1024, 2, true, true, true);          // F odd; 8 k-tiles a slice: the barriers through two phases
#endif
    printf("%s\n", failures ? "FAILURES" : "all ok");
    return failures;
}
