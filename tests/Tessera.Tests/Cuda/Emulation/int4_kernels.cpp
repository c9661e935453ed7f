// Group-wise int4 kernels of int4.cu on the CPU emulation of CUDA (f32 instantiations: the 16-bit conversions are PTX, which
// the emulation compiles away). Weights are drawn (seeded) as nibbles, F32 scales and zero points (symmetric: every zero 8;
// asymmetric: zeros drawn in 0 .. 15), packed here by a plain loop (column 8w + j of a row in bits 4j of its word w), and:
//   dequantize_int4_f32 must give scale * (q - zero) bit for bit (one fp32 product, as the CPU's F32 dequantization);
//   gemv_int4_f32_m{1..4} must give y = x W^T + bias + beta c against a double reference over the same dequantized weight,
//   within 1e-5 of sum |x w| + |bias| + |beta c| (fp32 sums in another order; K <= 1024 terms), over shapes with odd N,
//   several group sizes (32, 64, 128, a whole row, a last group shorter than the others), bias or none, beta 0 or with an
//   addend, and a grid smaller than the rows (the warps' grid stride); K a multiple of 32 takes the 16-byte quads (groups of
//   16 too, whose quads straddle two groups), other K single words.
// The ROPE forms of the 16-bit and the int4 streams: see rope_check.
// The persistent stream's int4 form gemv_stream_int4_{f32,bf16}_m{1..4} (gemv.cu; K and group multiples of 32), and its
// SwiGLU form gemv_stream_int4_swiglu_* (gate and up weights, SiLU(g) u, four shapes), against the
// same double reference: M = 1 to 4, N odd, fewer than the grid's warps or several rows a warp, K of one chunk (32), K a
// multiple of 32 but not of 128 (96, 1056, 4128), groups of 32, 64, 128, a whole row and a last group shorter (K = 320,
// group 128), bias, beta 1 on y itself, an addend, and the RMSNorm prologue (f32: x * rsqrt(mean x^2 + eps) * nw in double for the reference; the kernel rounds the
// normalized x to fp32 once). Each product runs with the weights loaded before pdl_wait (early) and after: the same bits, and
// y's row padding untouched. Tolerances: f32 1e-5 of sum |x w| + |bias| + |c| per output (fp32 sums of up to 4128 terms in
// another order leave about 1e-6 of it; a wrong group, nibble or row is off by 1e-2 or more); bf16 (no norm: gemv_stage_x's
// bf16 norm stores are PTX, compiled away here) the same plus 2^-7 of |y| (the stored output keeps 8 significant bits: half
// an ulp is up to 2^-8 of it).
// kernels.h is written by the test: the emulation, common.cuh, gemv.cu, int4.cu. Prints one line per check; exit code = failures.
#include "kernels.h"
#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

alignas(16) unsigned char gemv_smem[1 << 17];   // gemv_stream_int4's x (M, K) staged (66 KB at M = 4, K = 4128 in f32)
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

// offset: out starts that many floats past a 16-byte boundary (1: the value-by-value stores; 0: whole 16-byte stores).
static void dequantize_check(std::mt19937& rng, int N, int K, int group, bool sym, int offset = 0)
{
    auto w = draw(rng, N, K, group, sym);
    std::vector<float> buffer((size_t)N * K + 8, NAN);
    float* const aligned = (float*)(((unsigned long long)buffer.data() + 15) & ~15ull);
    const unsigned* pq = w.packed.data(); const float* ps = w.scales.data(); const signed char* pz = w.zeros.data(); float* po = aligned + offset;
    emu_launch(3, 64, [=] { dequantize_int4_f32(pq, ps, pz, po, (i64)N, K, group); });
    int bad = 0;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) if (po[(size_t)n * K + k] != (float)w.at(n, k)) bad++;
    const bool untouched = std::isnan(po[(size_t)N * K]);   // the float past the end
    char what[160];
    snprintf(what, sizeof what, "dequantize_int4_f32 N=%d K=%d group=%d %s%s", N, K, group, sym ? "sym" : "asym", offset ? " unaligned" : "");
    report(what, bad == 0 && untouched, bad ? std::to_string(bad) + " differ " : untouched ? "" : "wrote past the end ");
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

template <typename T> static const char* type_name();
template <> const char* type_name<float>() { return "f32"; }
template <> const char* type_name<bf16>() { return "bf16"; }

template <typename T, int M> static auto stream_kernel()
{
    if constexpr (std::is_same_v<T, float>)
    {
        if constexpr (M == 1) return gemv_stream_int4_f32_m1;
        else if constexpr (M == 2) return gemv_stream_int4_f32_m2;
        else if constexpr (M == 3) return gemv_stream_int4_f32_m3;
        else return gemv_stream_int4_f32_m4;
    }
    else
    {
        if constexpr (M == 1) return gemv_stream_int4_bf16_m1;
        else if constexpr (M == 2) return gemv_stream_int4_bf16_m2;
        else if constexpr (M == 3) return gemv_stream_int4_bf16_m3;
        else return gemv_stream_int4_bf16_m4;
    }
}

// y (M, N) = x W^T + bias + beta y (beta 0 or 1) or + an addend (read with beta 1, as CudaBackend passes it), x normalized
// first when norm; `grid` CTAs of 8 warps.
template <typename T, int M>
static void stream_check(std::mt19937& rng, int N, int K, int group, bool sym, bool bias, float beta, bool addend, bool norm, int grid)
{
    auto w = draw(rng, N, K, group, sym);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const i64 ldx = K + 16, ldy = N + 3, lda = N + 5;
    std::vector<T> x((size_t)M * ldx), b(N), c((size_t)M * lda), y0((size_t)M * ldy), nw(K);
    for (auto& v : x) v = from_f<T>(u(rng));
    for (auto& v : b) v = from_f<T>(u(rng));
    for (auto& v : c) v = from_f<T>(u(rng));
    for (auto& v : y0) v = from_f<T>(u(rng));
    for (auto& v : nw) v = from_f<T>(0.5f + 0.5f * u(rng));
    const float eps = 1e-5f;
    std::vector<double> e((size_t)M * N), mag((size_t)M * N);
    for (int m = 0; m < M; m++)
    {
        double ss = 0;
        for (int k = 0; k < K; k++) ss += (double)to_f(x[m * ldx + k]) * to_f(x[m * ldx + k]);
        const double r = norm ? 1 / std::sqrt(ss / K + eps) : 1;
        for (int n = 0; n < N; n++)
        {
            double s = 0, a = 0;
            for (int k = 0; k < K; k++)
            {
                double t = (double)to_f(x[m * ldx + k]) * r * (norm ? to_f(nw[k]) : 1.0) * w.at(n, k);
                s += t; a += std::fabs(t);
            }
            if (bias) { s += to_f(b[n]); a += std::fabs(to_f(b[n])); }
            double cv = addend ? to_f(c[m * lda + n]) : beta * to_f(y0[m * ldy + n]);
            s += cv; a += std::fabs(cv);
            e[(size_t)m * N + n] = s; mag[(size_t)m * N + n] = a;
        }
    }
    std::vector<T> y[2];
    for (int early = 0; early < 2; early++)
    {
        y[early] = y0;
        const T *px = x.data(), *pb = bias ? b.data() : nullptr, *pn = norm ? nw.data() : nullptr;
        T* py = y[early].data();
        const T* pc = addend ? c.data() : py;
        const unsigned* pq = w.packed.data(); const float* ps = w.scales.data(); const signed char* pz = w.zeros.data();
        int n_ = N, k_ = K, g_ = group, ea = early;
        i64 lx = ldx, ly = ldy, lc = addend ? lda : ldy;
        float be = addend ? 1.f : beta;
        auto kernel = stream_kernel<T, M>();
        emu_launch(grid, 256, [&] { kernel(px, pq, ps, pz, pb, py, pc, n_, k_, g_, lx, ly, lc, be, pn, eps, ea); });
    }
    double worst = 0; int bad = 0, differ = 0;
    const double rounding = std::is_same_v<T, float> ? 0.0 : 1.0 / 128;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++)
        {
            const double got = to_f(y[1][m * ldy + n]), ex = e[(size_t)m * N + n];
            const double err = std::fabs(got - ex) / (1e-5 * std::max(mag[(size_t)m * N + n], 1e-30) + rounding * std::fabs(ex));
            worst = std::max(worst, err);
            if (!(err <= 1)) bad++;
            if (to_f(y[0][m * ldy + n]) != to_f(y[1][m * ldy + n])) differ++;
        }
    for (int m = 0; m < M; m++)
        for (i64 j = N; j < ldy; j++)
            if (to_f(y[1][m * ldy + j]) != to_f(y0[m * ldy + j]) || to_f(y[0][m * ldy + j]) != to_f(y0[m * ldy + j])) bad++;
    char what[200], detail[64];
    snprintf(what, sizeof what, "gemv_stream_int4 %s M=%d N=%d K=%d group=%d %s%s beta=%g%s%s grid=%d", type_name<T>(), M, N, K,
             group, sym ? "sym" : "asym", bias ? " bias" : "", beta, addend ? " addend" : "", norm ? " norm" : "", grid);
    snprintf(detail, sizeof detail, "worst %.3f of tol, early = late %s ", worst, differ ? "NO" : "yes");
    report(what, bad == 0 && differ == 0, detail);
}

template <typename T, int M> static auto swiglu_kernel()
{
    if constexpr (std::is_same_v<T, float>)
    {
        if constexpr (M == 1) return gemv_stream_int4_swiglu_f32_m1;
        else if constexpr (M == 2) return gemv_stream_int4_swiglu_f32_m2;
        else if constexpr (M == 3) return gemv_stream_int4_swiglu_f32_m3;
        else return gemv_stream_int4_swiglu_f32_m4;
    }
    else
    {
        if constexpr (M == 1) return gemv_stream_int4_swiglu_bf16_m1;
        else if constexpr (M == 2) return gemv_stream_int4_swiglu_bf16_m2;
        else if constexpr (M == 3) return gemv_stream_int4_swiglu_bf16_m3;
        else return gemv_stream_int4_swiglu_bf16_m4;
    }
}

// The stream's SwiGLU form: y (M, F) = SiLU(x Wg^T + bg) * (x Wu^T + bu) over two int4 weights (each its own scales and
// zeros), x normalized first when norm. Tolerance: the fp32 sums of g and u each within 1e-5 of their sum |x w| + |b| (as
// the plain form's), carried through SiLU(g) u (|SiLU'| <= 1.1, |SiLU(g)| <= |g|), plus bf16's rounding of the output.
template <typename T, int M>
static void swiglu_check(std::mt19937& rng, int F, int K, int group, bool bias, bool norm, int grid)
{
    auto wg = draw(rng, F, K, group, false);
    auto wu = draw(rng, F, K, group, false);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const i64 ldx = K + 16, ldy = F + 3;
    std::vector<T> x((size_t)M * ldx), bg(F), bu(F), y0((size_t)M * ldy), nw(K);
    for (auto& v : x) v = from_f<T>(u(rng));
    for (auto& v : bg) v = from_f<T>(u(rng));
    for (auto& v : bu) v = from_f<T>(u(rng));
    for (auto& v : y0) v = from_f<T>(u(rng));
    for (auto& v : nw) v = from_f<T>(0.5f + 0.5f * u(rng));
    const float eps = 1e-5f;
    std::vector<double> e((size_t)M * F), tol((size_t)M * F);
    const double rounding = std::is_same_v<T, float> ? 0.0 : 1.0 / 128;
    for (int m = 0; m < M; m++)
    {
        double ss = 0;
        for (int k = 0; k < K; k++) ss += (double)to_f(x[m * ldx + k]) * to_f(x[m * ldx + k]);
        const double r = norm ? 1 / std::sqrt(ss / K + eps) : 1;
        for (int o = 0; o < F; o++)
        {
            double g = bias ? to_f(bg[o]) : 0.0, h = bias ? to_f(bu[o]) : 0.0, mg = std::fabs(g), mh = std::fabs(h);
            for (int k = 0; k < K; k++)
            {
                const double xv = (double)to_f(x[m * ldx + k]) * r * (norm ? to_f(nw[k]) : 1.0);
                g += xv * wg.at(o, k); mg += std::fabs(xv * wg.at(o, k));
                h += xv * wu.at(o, k); mh += std::fabs(xv * wu.at(o, k));
            }
            const double out = g / (1 + std::exp(-g)) * h;
            e[(size_t)m * F + o] = out;
            tol[(size_t)m * F + o] = 1e-5 * (1.1 * (std::fabs(h) + 1e-5 * mh) * mg + (std::fabs(g) + 1e-5 * mg) * mh) + rounding * std::fabs(out) + 1e-30;
        }
    }
    std::vector<T> y[2];
    for (int early = 0; early < 2; early++)
    {
        y[early] = y0;
        const T *px = x.data(), *pbg = bias ? bg.data() : nullptr, *pbu = bias ? bu.data() : nullptr, *pn = norm ? nw.data() : nullptr;
        T* py = y[early].data();
        int f_ = F, k_ = K, g_ = group, ea = early;
        i64 lx = ldx, ly = ldy;
        auto kernel = swiglu_kernel<T, M>();
        emu_launch(grid, 256, [&] {
            kernel(px, wg.packed.data(), wg.scales.data(), wg.zeros.data(), wu.packed.data(), wu.scales.data(), wu.zeros.data(), pbg, pbu,
                   py, f_, k_, g_, lx, ly, pn, eps, ea);
        });
    }
    double worst = 0; int bad = 0, differ = 0;
    for (int m = 0; m < M; m++)
        for (int o = 0; o < F; o++)
        {
            const double err = std::fabs(to_f(y[1][m * ldy + o]) - e[(size_t)m * F + o]) / tol[(size_t)m * F + o];
            worst = std::max(worst, err);
            if (!(err <= 1)) bad++;
            if (to_f(y[0][m * ldy + o]) != to_f(y[1][m * ldy + o])) differ++;
        }
    for (int m = 0; m < M; m++)
        for (i64 j = F; j < ldy; j++) if (to_f(y[1][m * ldy + j]) != to_f(y0[m * ldy + j])) bad++;   // padding untouched
    char what[200], detail[64];
    snprintf(what, sizeof what, "gemv_stream_int4_swiglu %s M=%d F=%d K=%d group=%d%s%s grid=%d", type_name<T>(), M, F, K, group,
             bias ? " bias" : "", norm ? " norm" : "", grid);
    snprintf(detail, sizeof detail, "worst %.3f of tol, early = late %s ", worst, differ ? "NO" : "yes");
    report(what, bad == 0 && differ == 0, detail);
}

// The ROPE forms of the streams (gemv_stream_rope_f32_m{M} over an f32 weight, gemv_stream_int4_rope_f32_m{M} over an int4
// one, gemv_stream_q8_rope_f32_m{M} over an int8 one with its row scales): qkv = x W^T + bias (x normalized first when norm), each pair (head hh, i) of rows hh D + i and hh D + i + D / 2 rotated
// at its row's position for the q and k heads, the k and v heads appended to a dense cache (B = M sequences, Tn = 1, at
// starts[b]) or a paged pool (at slots[m]; a slot of -1 writes nothing). Reference: the same stream's plain product (checked
// above) then the rotation on the host with the kernels' own rope_angle_at and rope_rotate: bit for bit, as a pair's two
// rows are summed exactly as the plain product sums them. Everything past the written entries must stay untouched.
// R < 16: partial rotary, the first R channels of each head rotating in pairs (i, i + R / 2) by frequencies over R, the
// other D - R passing through (into qkv and the cache as the product gave them). long_original > 0: LongRoPE, a second
// table (each frequency divided by 1 + 0.3 i) for every row once the call's length (the largest start + 1) passes it.
enum RopeWeight { RopeF32, RopeInt4, RopeInt8 };

template <int M>
static void rope_check(std::mt19937& rng, RopeWeight kind, bool paged, bool norm, bool bias, int grid, int R = 16, int long_original = 0)
{
    const bool int4 = kind == RopeInt4, int8 = kind == RopeInt8;
    const int H = 4, KH = 2, D = 16, K = 256, group = 64, rows = (H + 2 * KH) * D, pairs = rows / 2, S = 40, half = D / 2;
    auto w4 = draw(rng, rows, K, group, false);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const i64 ldx = K + 8, ldy = rows;
    std::vector<float> x((size_t)M * ldx), b(rows), nw(K), wf((size_t)rows * K);
    for (auto& v : x) v = u(rng);
    for (auto& v : b) v = u(rng);
    for (auto& v : nw) v = 0.5f + 0.5f * u(rng);
    for (int n = 0; n < rows; n++)
        for (int k = 0; k < K; k++) wf[(size_t)n * K + k] = int4 ? (float)w4.at(n, k) : u(rng);
    std::vector<signed char> q8((size_t)rows * K);
    std::vector<float> s8(rows);
    for (auto& v : q8) v = (signed char)((int)(rng() % 255) - 127);
    for (auto& v : s8) v = (0.25f + 0.5f * (u(rng) + 1.f)) / 127.f;
    std::vector<double> inv(R / 2), inv_long(R / 2);
    for (int i = 0; i < R / 2; i++) inv[i] = std::pow(10000.0, -2.0 * i / R);
    for (int i = 0; i < R / 2; i++) inv_long[i] = inv[i] / (1 + 0.3 * i);
    std::vector<int> starts(M), slots(M);
    std::vector<int> free_slots(64);
    for (int i = 0; i < 64; i++) free_slots[i] = i;
    std::shuffle(free_slots.begin(), free_slots.end(), rng);       // distinct slots: two rows never write one
    for (int m = 0; m < M; m++) { starts[m] = 3 + 7 * m; slots[m] = free_slots[m]; }
    if (paged && M > 1) slots[M - 1] = -1;                        // a padding row
    const int pool_rows = paged ? 64 : M * S;
    std::vector<float> cache0((size_t)pool_rows * 2 * KH * D);
    for (auto& v : cache0) v = u(rng);
    const float eps = 1e-5f;
    const float *px = x.data(), *pb = bias ? b.data() : nullptr, *pn = norm ? nw.data() : nullptr, *pw = wf.data();
    const unsigned* pq = w4.packed.data(); const float* ps = w4.scales.data(); const signed char* pz = w4.zeros.data();
    // The plain product.
    std::vector<float> lin((size_t)M * ldy, NAN);
    {
        float* py = lin.data();
        int n_ = rows, k_ = K, g_ = group, ea = 1;
        i64 lx = ldx, ly = ldy, lw = K;
        float one = 1.f, zero = 0.f;
        if (int4)
        {
            auto kernel = stream_kernel<float, M>();
            emu_launch(grid, 256, [&] { kernel(px, pq, ps, pz, pb, py, py, n_, k_, g_, lx, ly, ly, zero, pn, eps, ea); });
        }
        else if (int8)
        {
            auto kernel = M == 1 ? gemv_stream_q8_f32_m1 : M == 2 ? gemv_stream_q8_f32_m2 : M == 3 ? gemv_stream_q8_f32_m3 : gemv_stream_q8_f32_m4;
            emu_launch(grid, 256, [&] { kernel(px, q8.data(), s8.data(), pb, py, py, n_, k_, lx, lw, ly, ly, zero, pn, eps, ea); });
        }
        else
        {
            auto kernel = M == 1 ? gemv_stream_f32_m1 : M == 2 ? gemv_stream_f32_m2 : M == 3 ? gemv_stream_f32_m3 : gemv_stream_f32_m4;
            int plain = 0;
            emu_launch(grid, 256, [&] { kernel(px, pw, pb, py, n_, k_, lx, lw, ly, one, zero, pn, eps, plain, ea); });
        }
    }
    // The reference: the plain product rotated and appended on the host.
    const bool long_table = long_original > 0 && *std::max_element(starts.begin(), starts.end()) + 1 > long_original;
    const std::vector<double>& used = long_table ? inv_long : inv;
    std::vector<float> eq = lin, ecache = cache0;
    for (int m = 0; m < M; m++)
        for (int p = 0; p < pairs; p++)
        {
            // Pair i's channels: (i, i + R / 2) rotating, or two of the passing channels past R.
            const int hh = p / half, i = p % half, c0 = i < R / 2 ? i : R + (i - R / 2), c1 = i < R / 2 ? i + R / 2 : c0 + (D - R) / 2;
            float a = lin[m * ldy + hh * D + c0], c = lin[m * ldy + hh * D + c1];
            if (hh < H + KH && i < R / 2)
            {
                float cf, sf, y1, y2;
                rope_angle_at(starts[m], used[i], 1.0, cf, sf);
                rope_rotate(a, c, cf, sf, y1, y2);
                a = y1; c = y2;
            }
            eq[m * ldy + hh * D + c0] = a; eq[m * ldy + hh * D + c1] = c;
            if (hh >= H && (!paged || slots[m] >= 0))
            {
                const i64 at = (paged ? (i64)slots[m] : (i64)m * S + starts[m]) * 2 * KH * D + (i64)(hh - H) * D;
                ecache[at + c0] = a; ecache[at + c1] = c;
            }
        }
    std::vector<float> got((size_t)M * ldy, NAN), cache = cache0;
    {
        GemvRope<float> rope{};
        rope.cache = cache.data(); rope.starts = starts.data(); rope.slots = paged ? slots.data() : nullptr;
        rope.Tn = 1; rope.H = H; rope.KH = KH; rope.D = D;
        rope.cb = paged ? 0 : (i64)S * 2 * KH * D; rope.cs = 2 * KH * D; rope.ch = D;
        rope.freq.inv = inv.data(); rope.freq.attention = 1.0; rope.freq.theta = 10000.0; rope.freq.dyn_factor = 0.0; rope.freq.dyn_original = 0;
        rope.freq.rot = R;
        if (long_original > 0) { rope.freq.inv_long = inv_long.data(); rope.freq.long_original = long_original; }
        float* py = got.data();
        int p_ = pairs, k_ = K, g_ = group, ea = 0;
        i64 lx = ldx, ly = ldy, lw = K;
        if (int4)
        {
            auto kernel = M == 1 ? gemv_stream_int4_rope_f32_m1 : M == 2 ? gemv_stream_int4_rope_f32_m2 : M == 3 ? gemv_stream_int4_rope_f32_m3 : gemv_stream_int4_rope_f32_m4;
            emu_launch(grid, 256, [&] { kernel(px, pq, ps, pz, pb, py, p_, k_, g_, lx, ly, pn, eps, rope, ea); });
        }
        else if (int8)
        {
            auto kernel = M == 1 ? gemv_stream_q8_rope_f32_m1 : M == 2 ? gemv_stream_q8_rope_f32_m2 : M == 3 ? gemv_stream_q8_rope_f32_m3 : gemv_stream_q8_rope_f32_m4;
            emu_launch(grid, 256, [&] { kernel(px, q8.data(), s8.data(), pb, py, p_, k_, lx, lw, ly, pn, eps, rope, ea); });
        }
        else
        {
            auto kernel = M == 1 ? gemv_stream_rope_f32_m1 : M == 2 ? gemv_stream_rope_f32_m2 : M == 3 ? gemv_stream_rope_f32_m3 : gemv_stream_rope_f32_m4;
            int plain = 0;
            emu_launch(grid, 256, [&] { kernel(px, pw, pb, py, p_, k_, lx, lw, ly, pn, eps, plain, rope, ea); });
        }
    }
    int bad = 0;
    for (size_t j = 0; j < got.size(); j++) if (std::memcmp(&got[j], &eq[j], 4) != 0) bad++;
    for (size_t j = 0; j < cache.size(); j++) if (std::memcmp(&cache[j], &ecache[j], 4) != 0) bad++;
    char what[200];
    snprintf(what, sizeof what, "%s f32 M=%d %s%s%s grid=%d%s", int4 ? "gemv_stream_int4_rope" : int8 ? "gemv_stream_q8_rope" : "gemv_stream_rope", M, paged ? "paged" : "dense",
             norm ? " norm" : "", bias ? " bias" : "", grid,
             ((R < D ? " rotary " + std::to_string(R) : std::string()) + (long_original > 0 ? " longrope " + std::to_string(long_original) : std::string())).c_str());
    report(what, bad == 0, bad ? std::to_string(bad) + " differ " : "bit for bit ");
}

int main()
{
    std::mt19937 rng(11);
    dequantize_check(rng, 7, 256, 128, false);
    dequantize_check(rng, 5, 96, 64, true);       // a last group of 32
    dequantize_check(rng, 3, 40, 40, false);      // one group a row (per channel), K = 40
    dequantize_check(rng, 5, 96, 32, true, 1);    // out not 16-byte aligned: the value-by-value stores
    gemv_check(rng, 1, 37, 256, 128, false, true, false, 2);
    gemv_check(rng, 2, 33, 96, 64, true, false, true, 1);
    gemv_check(rng, 3, 9, 512, 32, false, true, true, 4);
    gemv_check(rng, 4, 65, 1024, 128, true, true, false, 3);
    gemv_check(rng, 4, 19, 200, 200, false, false, false, 1);
    gemv_check(rng, 1, 1, 8, 8, false, false, false, 1);
    gemv_check(rng, 2, 11, 128, 16, false, true, false, 2);   // quads whose words fall in two groups (group 16)
    gemv_check(rng, 3, 7, 2048, 64, true, false, true, 1);    // two quads a lane
    stream_check<float, 1>(rng, 37, 256, 128, false, true, 0.f, false, false, 2);
    stream_check<float, 1>(rng, 1, 32, 32, false, false, 0.f, false, false, 1);       // one chunk, one row
    stream_check<float, 2>(rng, 33, 96, 32, true, false, 1.f, false, false, 1);       // K not a multiple of 128; beta on y
    stream_check<float, 2>(rng, 77, 1056, 1056, false, true, 0.f, true, false, 3);   // one group a row, K = 33 chunks
    stream_check<float, 3>(rng, 9, 512, 64, false, true, 0.f, true, true, 4);        // fewer rows than warps; norm
    stream_check<float, 3>(rng, 45, 4128, 32, false, false, 1.f, false, false, 1);   // several units a row, 6 rows a warp
    stream_check<float, 4>(rng, 130, 2048, 128, true, true, 0.f, false, true, 2);    // llama's group; norm
    stream_check<float, 4>(rng, 19, 1024, 64, false, false, 0.f, true, false, 1);
    stream_check<float, 1>(rng, 100, 2048, 128, false, true, 1.f, false, true, 5);
    stream_check<float, 2>(rng, 21, 320, 128, false, true, 0.f, true, false, 2);     // a last group of 64
    stream_check<bf16, 1>(rng, 65, 2048, 128, false, true, 0.f, false, false, 2);
    stream_check<bf16, 2>(rng, 50, 1056, 32, true, false, 0.f, true, false, 3);
    stream_check<bf16, 4>(rng, 33, 4096, 128, false, true, 1.f, false, false, 2);
    swiglu_check<float, 1>(rng, 37, 256, 128, true, false, 2);     // the gate row then the up row of each output
    swiglu_check<float, 2>(rng, 9, 1056, 32, false, true, 4);      // fewer outputs than warps; normalized; K = 33 chunks
    swiglu_check<float, 4>(rng, 70, 2048, 128, true, true, 1);     // several outputs a warp, two units a half
    swiglu_check<bf16, 3>(rng, 45, 512, 64, true, false, 2);
    rope_check<1>(rng, RopeF32, false, true, false, 2);    // the 16-bit stream's ROPE form: a batch-1 decode step, dense cache
    rope_check<4>(rng, RopeF32, true, false, true, 3);     // paged, a padding row, bias
    rope_check<1>(rng, RopeInt4, false, true, false, 2);   // the int4 stream's: dense
    rope_check<3>(rng, RopeInt4, true, true, true, 1);     // paged, a padding row, normalized, bias, one CTA for 64 pairs
    rope_check<2>(rng, RopeInt4, false, false, true, 5);
    rope_check<1>(rng, RopeInt8, false, true, true, 2);    // the int8 stream's: each row's scale
    rope_check<4>(rng, RopeInt8, true, false, true, 3);
    rope_check<1>(rng, RopeF32, false, true, true, 2, 12);   // partial rotary (Phi-4-mini's 0.75): 12 of 16 channels turn
    rope_check<2>(rng, RopeInt4, true, false, false, 3, 6);  // 6 of 16, paged, the int4 stream
    rope_check<2>(rng, RopeInt8, false, true, true, 2, 12);  // 12 of 16, the int8 stream (each row's scale at its channel)
    rope_check<3>(rng, RopeF32, true, false, true, 2, 16, 8);   // LongRoPE: starts 3, 10, 17 reach 18 positions, past 8: the long table
    rope_check<2>(rng, RopeInt4, false, true, false, 1, 6, 11); // LongRoPE at exactly its length (11): the short table; 6 of 16 turn
    return failures;
}
