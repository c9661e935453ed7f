// Decoding's persistent matrix-vector kernels (gemv.cu) on the CPU emulation of CUDA, against double references: the
// int8-weight form gemv_stream_q8_* (QuantizedMatMul's fast path: y = scales[n] * (x q_n) + bias + beta * y, or + an
// addend read in place of y) for M = 1 to 4 in f32, and once in bf16; the float-weight form gemv_stream_f32_* that shares
// its stream (once plain, once with RMSNorm on the way); and dequantize_f32 (quantized.cu). The shapes cover K short of one
// unit of the stream and K a unit and one chunk long (U = 8 for M <= 2, 4 above), N not a multiple of the grid's warps and
// fewer rows than warps, row strides past the rows (x, y and the addend), and a CTA count that makes warps walk several
// rows. Each product also runs with the weights loaded before pdl_wait (early) and after, which must give the same bits,
// and leaves y's row padding untouched. The FP8 form gemv_stream_f8_* runs in f32 (with and without the norm) and in bf16
// (without: gemv_stage_x's bf16 norm stores go through PTX, compiled away here); its values are compared against the CPU
// backend by KernelEmulationTests (the cases written to f8_<index>.bin, see run_f8).
//
// Tolerances: f32 outputs to 1e-5 of the largest expected value: each lane sums about K / 512 to K / 16 fp32 FMAs and the
// warp adds 32 partial sums in a tree, so rounding leaves about 1e-7 to 1e-6 of the sums' magnitude, while a skipped or
// repeated chunk, a wrong row or a wrong scale is off by 1e-2 or more. bf16 outputs to 8e-3: the stored output keeps 8
// significant bits (2^-9 relative). The bf16 case is valid here because nothing it runs goes through inline PTX (to_f of
// bf16 is a shift and from_f<bf16> integer rounding; the emulation compiles asm away). dequantize_f32 is compared
// exactly: scale * q rounded once to fp32 is what the kernel and the CPU backend both compute.
//
// kernels.h is written by the test: the emulation, common.cuh, gemv.cu, quantized.cu. Prints one line per check; the exit
// code is the number of failures.
#include "kernels.h"
#include "emulation_check.h"
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

alignas(16) unsigned char gemv_smem[1 << 17];   // the kernels' x (M, K) staged (66 KB at M = 4, K = 4112 in f32)

static void report(const std::string& what, bool ok, const char* detail = "")
{
    printf("%-72s %s%s\n", what.c_str(), detail, ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

// max |got - expected| / max |expected| against tol; a value that is not finite fails.
static void check(const std::string& what, const std::vector<double>& e, const std::vector<float>& a, double tol)
{
    const double rel = errors_of(e.data(), a.data(), e.size()).relative();
    char detail[40];
    snprintf(detail, sizeof detail, "rel err %.3e ", rel);
    report(what, rel <= tol, detail);
}

template <typename T> static std::vector<T> uniform(size_t n, std::mt19937& rng, float scale, float offset = 0.f)
{
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<T> v(n);
    for (auto& e : v) e = from_f<T>(offset + scale * u(rng));
    return v;
}

template <typename T> static const char* type_name();
template <> const char* type_name<float>() { return "f32"; }
template <> const char* type_name<bf16>() { return "bf16"; }

// The int8 kernel for M rows of x of type T.
template <typename T, int M> static auto q8_kernel()
{
    if constexpr (std::is_same_v<T, float>)
    {
        if constexpr (M == 1) return gemv_stream_q8_f32_m1;
        else if constexpr (M == 2) return gemv_stream_q8_f32_m2;
        else if constexpr (M == 3) return gemv_stream_q8_f32_m3;
        else return gemv_stream_q8_f32_m4;
    }
    else
    {
        if constexpr (M == 1) return gemv_stream_q8_bf16_m1;
        else if constexpr (M == 2) return gemv_stream_q8_bf16_m2;
        else if constexpr (M == 3) return gemv_stream_q8_bf16_m3;
        else return gemv_stream_q8_bf16_m4;
    }
}

// y (M, N) = scales[n] * (x q_n) + bias + beta * y, or + addend (then the kernel reads the addend with beta = 1, as
// CudaBackend passes it), on a grid of `grid` CTAs of 8 warps; x RMS-normalized as it is staged when with_norm.
template <typename T, int M> static void run_q8(int N, int K, int grid, bool with_bias, float beta, bool with_addend,
                                                bool with_norm = false)
{
    std::mt19937 rng(11 + M * 7 + N + K + grid);
    const int ldx = K + 16, ldy = N + 8, lda = N + 3;
    auto x = uniform<T>((size_t)M * ldx, rng, 1.f), bias = uniform<T>(N, rng, 1.f), y0 = uniform<T>((size_t)M * ldy, rng, 1.f),
         addend = uniform<T>((size_t)M * lda, rng, 1.f);
    std::uniform_int_distribution<int> level(-127, 127);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    std::vector<signed char> q((size_t)N * K);
    for (auto& v : q) v = (signed char)level(rng);
    std::vector<float> scales(N);
    for (auto& s : scales) s = (0.25f + u(rng)) / 127.f;
    auto nw = uniform<T>(K, rng, 1.f);
    const float eps = 1e-5f;
    std::vector<double> e((size_t)M * N);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++)
        {
            double ss = 0;
            for (int k = 0; k < K; k++) ss += (double)to_f(x[(size_t)m * ldx + k]) * to_f(x[(size_t)m * ldx + k]);
            const double rstd = with_norm ? 1 / std::sqrt(ss / K + eps) : 1;
            double s = 0;
            for (int k = 0; k < K; k++)
                s += (double)to_f(x[(size_t)m * ldx + k]) * rstd * (with_norm ? to_f(nw[k]) : 1.0) * q[(size_t)n * K + k];
            double r = scales[n] * s + (with_bias ? to_f(bias[n]) : 0.0);
            r += with_addend ? to_f(addend[(size_t)m * lda + n]) : beta * to_f(y0[(size_t)m * ldy + n]);
            e[(size_t)m * N + n] = r;
        }
    std::vector<T> y[2];
    std::vector<float> got[2];
    for (int early = 0; early < 2; early++)
    {
        y[early] = y0;
        const T *px = x.data(), *pb = with_bias ? bias.data() : nullptr;
        T* py = y[early].data();
        const T* pc = with_addend ? addend.data() : py;
        const signed char* pq = q.data();
        const float* ps = scales.data();
        const T* pn = with_norm ? nw.data() : nullptr;
        int n_ = N, k_ = K, ea = early;
        long long lx = ldx, lw = K, ly = ldy, lc = with_addend ? lda : ldy;
        float be = with_addend ? 1.f : beta;
        auto kernel = q8_kernel<T, M>();
        emu_launch(grid, 256, [&] { kernel(px, pq, ps, pb, py, pc, n_, k_, lx, lw, ly, lc, be, pn, eps, ea); });
        got[early].resize((size_t)M * N);
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) got[early][(size_t)m * N + n] = to_f(y[early][(size_t)m * ldy + n]);
    }
    char name[120];
    snprintf(name, sizeof name, "gemv_stream_q8 %s M=%d N=%d K=%d grid=%d bias=%d beta=%g%s%s", type_name<T>(), M, N, K, grid,
             with_bias ? 1 : 0, beta, with_addend ? " addend" : "", with_norm ? " norm" : "");
    check(name, e, got[1], std::is_same_v<T, float> ? 1e-5 : 8e-3);
    bool pads = true;   // the row stride's padding past N is untouched
    for (int m = 0; m < M; m++)
        for (int n = N; n < ldy; n++) pads &= std::memcmp(&y[1][(size_t)m * ldy + n], &y0[(size_t)m * ldy + n], sizeof(T)) == 0;
    report(std::string(name) + ": early = late, pads", std::memcmp(y[0].data(), y[1].data(), y[0].size() * sizeof(T)) == 0 && pads);
}

// The int8 SwiGLU form of the stream (gemv_stream_q8_swiglu_*): y (M, F) = SiLU(sg[o] (x qg_o) + bg) * (su[o] (x qu_o) + bu),
// x normalized on the way when with_norm. Tolerance as the plain form's (f32 1e-5, bf16 8e-3 of the largest output).
template <typename T, int M> static void run_q8_swiglu(int F, int K, int grid, bool with_bias, bool with_norm)
{
    std::mt19937 rng(19 + M * 7 + F + K + grid);
    const int ldx = K + 16, ldy = F + 8;
    auto x = uniform<T>((size_t)M * ldx, rng, 1.f), bg = uniform<T>(F, rng, 1.f), bu = uniform<T>(F, rng, 1.f), nw = uniform<T>(K, rng, 1.f);
    std::uniform_int_distribution<int> level(-127, 127);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    std::vector<signed char> qg((size_t)F * K), qu((size_t)F * K);
    for (auto& v : qg) v = (signed char)level(rng);
    for (auto& v : qu) v = (signed char)level(rng);
    std::vector<float> sg(F), su(F);
    for (auto& s : sg) s = (0.25f + u(rng)) / 127.f;
    for (auto& s : su) s = (0.25f + u(rng)) / 127.f;
    const float eps = 1e-5f;
    std::vector<double> e((size_t)M * F);
    for (int m = 0; m < M; m++)
    {
        double ss = 0;
        for (int k = 0; k < K; k++) ss += (double)to_f(x[(size_t)m * ldx + k]) * to_f(x[(size_t)m * ldx + k]);
        const double rstd = with_norm ? 1 / std::sqrt(ss / K + eps) : 1;
        for (int o = 0; o < F; o++)
        {
            double g = 0, h = 0;
            for (int k = 0; k < K; k++)
            {
                const double xv = (double)to_f(x[(size_t)m * ldx + k]) * rstd * (with_norm ? to_f(nw[k]) : 1.0);
                g += xv * qg[(size_t)o * K + k];
                h += xv * qu[(size_t)o * K + k];
            }
            g = sg[o] * g + (with_bias ? to_f(bg[o]) : 0.0);
            h = su[o] * h + (with_bias ? to_f(bu[o]) : 0.0);
            e[(size_t)m * F + o] = g / (1 + std::exp(-g)) * h;
        }
    }
    std::vector<T> y((size_t)M * ldy, from_f<T>(0.f));
    const T *px = x.data(), *pbg = with_bias ? bg.data() : nullptr, *pbu = with_bias ? bu.data() : nullptr, *pn = with_norm ? nw.data() : nullptr;
    const signed char *pg = qg.data(), *pu = qu.data();
    const float *psg = sg.data(), *psu = su.data();
    T* py = y.data();
    int f_ = F, k_ = K, early = 1;
    long long lx = ldx, lw = K, ly = ldy;
    auto launch = [&](auto kernel) { emu_launch(grid, 256, [&] { kernel(px, pg, pu, psg, psu, pbg, pbu, py, f_, k_, lx, lw, ly, pn, eps, early); }); };
    if constexpr (std::is_same_v<T, float>)
    {
        if constexpr (M == 1) launch(gemv_stream_q8_swiglu_f32_m1);
        else if constexpr (M == 2) launch(gemv_stream_q8_swiglu_f32_m2);
        else if constexpr (M == 3) launch(gemv_stream_q8_swiglu_f32_m3);
        else launch(gemv_stream_q8_swiglu_f32_m4);
    }
    else
    {
        if constexpr (M == 1) launch(gemv_stream_q8_swiglu_bf16_m1);
        else if constexpr (M == 2) launch(gemv_stream_q8_swiglu_bf16_m2);
        else if constexpr (M == 3) launch(gemv_stream_q8_swiglu_bf16_m3);
        else launch(gemv_stream_q8_swiglu_bf16_m4);
    }
    std::vector<float> got((size_t)M * F);
    for (int m = 0; m < M; m++)
        for (int o = 0; o < F; o++) got[(size_t)m * F + o] = to_f(y[(size_t)m * ldy + o]);
    char name[120];
    snprintf(name, sizeof name, "gemv_stream_q8_swiglu %s M=%d F=%d K=%d grid=%d bias=%d%s", type_name<T>(), M, F, K, grid, with_bias ? 1 : 0,
             with_norm ? " norm" : "");
    check(name, e, got, std::is_same_v<T, float> ? 1e-5 : 8e-3);
}

// The float-weight form on the same stream: y = alpha * x W^T + bias + beta * y, x RMS-normalized on the way when asked (with
// unit, Gemma's scale 1 + w).
template <int M> static void run_f32(int N, int K, int grid, bool with_bias, float alpha, float beta, bool with_norm, bool unit = false)
{
    std::mt19937 rng(13 + M * 5 + N + K + grid);
    const int ldx = K + 4, ldw = K + 8, ldy = N + 5;
    auto x = uniform<float>((size_t)M * ldx, rng, 1.f), w = uniform<float>((size_t)N * ldw, rng, 0.1f), bias = uniform<float>(N, rng, 1.f),
         y0 = uniform<float>((size_t)M * ldy, rng, 1.f), nw = uniform<float>(K, rng, 0.5f, 1.f);
    const float eps = 1e-5f;
    std::vector<double> e((size_t)M * N);
    for (int m = 0; m < M; m++)
    {
        double ss = 0;
        for (int k = 0; k < K; k++) ss += (double)x[(size_t)m * ldx + k] * x[(size_t)m * ldx + k];
        const double r = with_norm ? 1 / std::sqrt(ss / K + eps) : 1;
        for (int n = 0; n < N; n++)
        {
            double s = 0;
            for (int k = 0; k < K; k++) s += x[(size_t)m * ldx + k] * r * (with_norm ? (unit ? 1.0 + nw[k] : nw[k]) : 1.0) * w[(size_t)n * ldw + k];
            e[(size_t)m * N + n] = alpha * s + (with_bias ? bias[n] : 0.0) + beta * y0[(size_t)m * ldy + n];
        }
    }
    std::vector<float> y = y0;
    const float *px = x.data(), *pw = w.data(), *pb = with_bias ? bias.data() : nullptr, *pn = with_norm ? nw.data() : nullptr;
    float* py = y.data();
    int n_ = N, k_ = K, early = 1, un = unit ? 1 : 0;
    long long lx = ldx, lw = ldw, ly = ldy;
    float al = alpha, be = beta, ep = eps;
    auto launch = [&](auto kernel) { emu_launch(grid, 256, [&] { kernel(px, pw, pb, py, n_, k_, lx, lw, ly, al, be, pn, ep, un, early); }); };
    if constexpr (M == 1) launch(gemv_stream_f32_m1);
    else if constexpr (M == 2) launch(gemv_stream_f32_m2);
    else if constexpr (M == 3) launch(gemv_stream_f32_m3);
    else launch(gemv_stream_f32_m4);
    std::vector<float> got((size_t)M * N);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) got[(size_t)m * N + n] = y[(size_t)m * ldy + n];
    char name[120];
    snprintf(name, sizeof name, "gemv_stream f32 M=%d N=%d K=%d grid=%d bias=%d beta=%g%s", M, N, K, grid, with_bias ? 1 : 0, beta,
             with_norm ? (unit ? " norm unit" : " norm") : "");
    check(name, e, got, 1e-5);
}

// The float-weight SwiGLU form: out (M, F) = act(x Wg^T + bg) * (x Wu^T + bu), act SiLU or (gelu) the tanh GELU (GeGLU), x
// RMS-normalized on the way (unit: the scale 1 + w).
template <int M> static void run_swiglu_f32(int F, int K, int grid, bool with_bias, bool gelu, bool unit)
{
    std::mt19937 rng(29 + M * 5 + F + K + grid);
    const int ldx = K + 4, ldw = K + 8;
    auto x = uniform<float>((size_t)M * ldx, rng, 1.f), wg = uniform<float>((size_t)F * ldw, rng, 0.1f),
         wu = uniform<float>((size_t)F * ldw, rng, 0.1f), bg = uniform<float>(F, rng, 1.f), bu = uniform<float>(F, rng, 1.f),
         nw = uniform<float>(K, rng, 0.5f);
    const float eps = 1e-6f;
    std::vector<double> e((size_t)M * F);
    for (int m = 0; m < M; m++)
    {
        double ss = 0;
        for (int k = 0; k < K; k++) ss += (double)x[(size_t)m * ldx + k] * x[(size_t)m * ldx + k];
        const double r = 1 / std::sqrt(ss / K + eps);
        for (int n = 0; n < F; n++)
        {
            double g = with_bias ? bg[n] : 0.0, u = with_bias ? bu[n] : 0.0;
            for (int k = 0; k < K; k++)
            {
                const double h = x[(size_t)m * ldx + k] * r * (unit ? 1.0 + nw[k] : nw[k]);
                g += h * wg[(size_t)n * ldw + k];
                u += h * wu[(size_t)n * ldw + k];
            }
            const double act = gelu ? 0.5 * g * (1 + std::tanh(0.7978845608028654 * (g + 0.044715 * g * g * g))) : g / (1 + std::exp(-g));
            e[(size_t)m * F + n] = act * u;
        }
    }
    std::vector<float> out((size_t)M * F);
    const float *px = x.data(), *pg = wg.data(), *pu = wu.data(), *pbg = with_bias ? bg.data() : nullptr,
                *pbu = with_bias ? bu.data() : nullptr, *pn = nw.data();
    float* po = out.data();
    int f_ = F, k_ = K, un = unit ? 1 : 0, ge = gelu ? 1 : 0, early = 1;
    long long lx = ldx, lw = ldw, lo = F;
    float ep = eps;
    auto launch = [&](auto kernel) { emu_launch(grid, 256, [&] { kernel(px, pg, pu, pbg, pbu, po, f_, k_, lx, lw, lo, pn, ep, un, ge, early); }); };
    if constexpr (M == 1) launch(gemv_stream_swiglu_f32_m1);
    else if constexpr (M == 2) launch(gemv_stream_swiglu_f32_m2);
    else if constexpr (M == 3) launch(gemv_stream_swiglu_f32_m3);
    else launch(gemv_stream_swiglu_f32_m4);
    char name[120];
    snprintf(name, sizeof name, "gemv_stream_swiglu f32 M=%d F=%d K=%d grid=%d bias=%d%s%s", M, F, K, grid, with_bias ? 1 : 0,
             gelu ? " geglu" : "", unit ? " unit" : "");
    check(name, e, out, 1e-5);
}

// The FP8 kernel for M rows of x of type T.
template <typename T, int M> static auto f8_kernel()
{
    if constexpr (std::is_same_v<T, float>)
    {
        if constexpr (M == 1) return gemv_stream_f8_f32_m1;
        else if constexpr (M == 2) return gemv_stream_f8_f32_m2;
        else if constexpr (M == 3) return gemv_stream_f8_f32_m3;
        else return gemv_stream_f8_f32_m4;
    }
    else
    {
        if constexpr (M == 1) return gemv_stream_f8_bf16_m1;
        else if constexpr (M == 2) return gemv_stream_f8_bf16_m2;
        else if constexpr (M == 3) return gemv_stream_f8_bf16_m3;
        else return gemv_stream_f8_bf16_m4;
    }
}

// The FP8 form gemv_stream_f8_*: y = sx[m] * scales[n] * (e4m3(x_m / sx[m]) . q_n) + bias + beta * y, or + addend, x
// RMS-normalized as it is staged when with_norm. Checked here: the early and late weight loads give the same bits and y's
// row padding is untouched; the values against CpuBackend.QuantizedMatMul in KernelEmulationTests, which reads the case
// this writes to f8_<index>.bin (int32 M, N, K, bf16, bias, addend, norm, seed; float beta, eps; float x (M, K), norm
// weight (K), bias (N), y0 or the addend (M, N), weight scales (N); bytes codes (N, K); float y (M, N)). Random codes
// (never NaN: 0x7F and 0xFF become 0x7E and 0xFE), x uniform in [-1, 1) with one large value a row (its scale), and a
// row of zeros (scale 1) as x's last row when M > 2.
template <typename T, int M> static void run_f8(int index, int N, int K, int grid, bool with_bias, float beta, bool with_addend,
                                                bool with_norm)
{
    const unsigned seed = 29 + 1000 * index + M * 7 + N + K + grid;
    std::mt19937 rng(seed);
    const int ldx = K + 16, ldy = N + 8, lda = N + 3;
    auto x = uniform<T>((size_t)M * ldx, rng, 1.f), bias = uniform<T>(N, rng, 1.f), y0 = uniform<T>((size_t)M * ldy, rng, 1.f),
         addend = uniform<T>((size_t)M * lda, rng, 1.f), nw = uniform<T>(K, rng, 0.5f, 1.f);
    for (int m = 0; m < M; m++) x[(size_t)m * ldx + (rng() % K)] = from_f<T>(3.f + m);
    if (M > 2)
        for (int k = 0; k < K; k++) x[(size_t)(M - 1) * ldx + k] = from_f<T>(0.f);
    std::vector<unsigned char> q((size_t)N * K);
    for (auto& v : q) { v = (unsigned char)(rng() & 0xFF); if ((v & 0x7F) == 0x7F) v--; }
    std::uniform_real_distribution<float> u(0.f, 1.f);
    std::vector<float> scales(N);
    for (auto& s : scales) s = (0.25f + u(rng)) * 0.1f / 448.f;
    const float eps = 1e-5f;
    std::vector<T> y[2];
    for (int early = 0; early < 2; early++)
    {
        y[early] = y0;
        const T *px = x.data(), *pb = with_bias ? bias.data() : nullptr;
        T* py = y[early].data();
        const T* pc = with_addend ? addend.data() : py;
        const unsigned char* pq = q.data();
        const float* ps = scales.data();
        const T* pn = with_norm ? nw.data() : nullptr;
        int n_ = N, k_ = K, ea = early;
        long long lx = ldx, lw = K, ly = ldy, lc = with_addend ? lda : ldy;
        float be = with_addend ? 1.f : beta;
        auto kernel = f8_kernel<T, M>();
        emu_launch(grid, 256, [&] { kernel(px, pq, ps, pb, py, pc, n_, k_, lx, lw, ly, lc, be, pn, eps, ea); });
    }
    char name[160];
    snprintf(name, sizeof name, "gemv_stream_f8 %s M=%d N=%d K=%d grid=%d bias=%d beta=%g%s%s", type_name<T>(), M, N, K, grid,
             with_bias ? 1 : 0, beta, with_addend ? " addend" : "", with_norm ? " norm" : "");
    bool pads = true;
    for (int m = 0; m < M; m++)
        for (int n = N; n < ldy; n++) pads &= std::memcmp(&y[1][(size_t)m * ldy + n], &y0[(size_t)m * ldy + n], sizeof(T)) == 0;
    report(std::string(name) + ": early = late, pads", std::memcmp(y[0].data(), y[1].data(), y[0].size() * sizeof(T)) == 0 && pads);
    char file[32];
    snprintf(file, sizeof file, "f8_%d.bin", index);
    FILE* f = fopen(file, "wb");
    auto ints = [&](std::initializer_list<int> v) { for (int i : v) fwrite(&i, 4, 1, f); };
    auto flt = [&](float v) { fwrite(&v, 4, 1, f); };
    ints({M, N, K, std::is_same_v<T, float> ? 0 : 1, with_bias, with_addend, with_norm, (int)seed});
    flt(with_addend ? 1.f : beta);
    flt(eps);
    for (int m = 0; m < M; m++) for (int k = 0; k < K; k++) flt(to_f(x[(size_t)m * ldx + k]));
    for (int k = 0; k < K; k++) flt(to_f(nw[k]));
    for (int n = 0; n < N; n++) flt(to_f(bias[n]));
    for (int m = 0; m < M; m++) for (int n = 0; n < N; n++) flt(to_f(with_addend ? addend[(size_t)m * lda + n] : y0[(size_t)m * ldy + n]));
    for (int n = 0; n < N; n++) flt(scales[n]);
    fwrite(q.data(), 1, q.size(), f);
    for (int m = 0; m < M; m++) for (int n = 0; n < N; n++) flt(to_f(y[1][(size_t)m * ldy + n]));
    fclose(f);
    printf("%s: seed %u, written to %s\n", name, seed, file);
}

// out (N, K) = scales[n] * values[n, k]: every element exactly the fp32 product (a grid-stride loop over fewer threads
// than elements, rows crossing the blocks' edges). K a multiple of 16 takes 16 values a thread when out is 16-byte aligned
// (offset 0; the values are, from the vector), else (offset 1: out a float past a 16-byte boundary) value by value.
static void run_dequantize(int N, int K, int grid, int block, int offset = 0)
{
    std::mt19937 rng(17 + N + K);
    std::uniform_int_distribution<int> level(-127, 127);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    std::vector<signed char> q((size_t)N * K);
    for (auto& v : q) v = (signed char)level(rng);
    std::vector<float> scales(N), buffer((size_t)N * K + 8, NAN);
    for (auto& s : scales) s = u(rng) / 127.f;
    scales[N / 2] = 0.f;   // a row of zeros quantizes to scale 0
    const signed char* pq = q.data();
    const float* ps = scales.data();
    float* po = (float*)(((unsigned long long)buffer.data() + 15) & ~15ull) + offset;
    float* const out = po;
    long long n = (long long)N * K;
    int k_ = K;
    emu_launch(grid, block, [&] { dequantize_f32(pq, ps, po, n, k_); });
    bool exact = true;
    for (int r = 0; r < N; r++)
        for (int c = 0; c < K; c++)
        {
            const float expected = (float)((double)scales[r] * q[(size_t)r * K + c]);   // exact in double, rounded once
            exact &= std::memcmp(&out[(size_t)r * K + c], &expected, 4) == 0;
        }
    char name[120];
    exact &= std::isnan(out[(size_t)N * K]);   // nothing written past the end
    snprintf(name, sizeof name, "dequantize_f32 N=%d K=%d grid=%d block=%d exact%s", N, K, grid, block, offset ? " unaligned" : "");
    report(name, exact);
}

int main()
{
    run_q8<float, 1>(100, 1008, 2, true, 0.f, false);    // 63 chunks: one unit (256 chunks at U = 8) part full; 100 rows on 16 warps
    run_q8<float, 2>(77, 4112, 3, false, 1.f, false);    // 257 chunks: a full unit, then one of a single chunk; the residual
    run_q8<float, 3>(45, 2064, 1, true, 1.f, false);     // U = 4: 129 chunks, a unit of 128 and one of 1; 8 warps, 45 rows
    run_q8<float, 4>(130, 4112, 2, true, 0.f, true);     // 3 units at U = 4; the addend read in place of y
    run_q8<float, 4>(9, 16, 4, false, 0.f, false);       // one chunk a row; 32 warps for 9 rows (most idle)
    run_q8<float, 1>(37, 528, 5, true, 0.f, true);       // M = 1 with an addend; 40 warps for 37 rows
    run_q8<bf16, 2>(100, 1024, 2, true, 1.f, false);     // bf16 x, bias and y: x's two 16-byte pieces a chunk
    run_q8<float, 1>(100, 2048, 2, true, 0.f, false, true);   // RMS-normalized x (the int8 decode step's norms): K = 2048, half a unit
    run_q8<float, 3>(45, 2064, 1, false, 1.f, false, true);   // the norm with beta = 1, three rows, two units a row
    run_q8_swiglu<float, 1>(37, 512, 2, true, false);         // the gate row then the up row, each times its scale
    run_q8_swiglu<float, 4>(20, 2048, 3, false, true);        // normalized, four rows
    run_q8_swiglu<bf16, 2>(65, 1024, 1, true, false);     // bf16 (no norm: its staged stores are PTX, compiled away here)
    run_f32<1>(100, 1000, 2, true, 0.5f, 1.f, false);    // the float-weight form: 250 chunks of 4, alpha and the residual
    run_f32<4>(37, 516, 1, false, 1.f, 0.f, true);       // with RMSNorm on the way
    run_f32<2>(45, 1152, 3, true, 1.f, 1.f, true, true); // Gemma's unit-offset norm (scale 1 + w), the residual
    run_swiglu_f32<1>(37, 1152, 2, true, true, true);    // GeGLU (Gemma) with the unit-offset norm
    run_swiglu_f32<3>(20, 512, 1, false, false, false);  // SwiGLU, its norm plain
    // The FP8 form (rows of one to three units: 256 chunks of 16 codes at U = 8 for M <= 2, 128 at U = 4 above).
    run_f8<float, 1>(0, 100, 1008, 2, true, 0.f, false, false);   // part of one unit; 100 rows on 16 warps
    run_f8<float, 2>(1, 77, 4112, 3, false, 1.f, false, false);   // a full unit and one chunk; the residual
    run_f8<float, 3>(2, 45, 4112, 1, true, 0.f, false, true);     // U = 4: three units; the norm; a row of zeros
    run_f8<float, 4>(3, 130, 2064, 2, true, 0.f, true, true);     // two units; the addend and the norm; a row of zeros
    run_f8<float, 1>(4, 37, 2048, 5, false, 0.f, true, true);     // half a unit (llama-1b's rows), 40 warps for 37 rows
    run_f8<bf16, 2>(5, 100, 1024, 2, true, 1.f, false, false);    // bf16 x, bias and y; the residual
    run_f8<bf16, 4>(6, 64, 2064, 2, false, 0.f, true, false);     // bf16, two units, the addend, a row of zeros
    run_dequantize(37, 45, 3, 64);
    run_dequantize(8, 4096, 7, 128);
    run_dequantize(5, 48, 2, 32, 1);
    printf("%s\n", failures ? "FAILURES" : "all ok");
    return failures;
}
