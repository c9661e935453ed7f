// moe.cu's mixture-of-experts kernels (moe_route, moe_align, moe_expert_swiglu, moe_expert_down, moe_combine in f32; the
// tensor-core moe_gemm_* in bf16, see gemm_case) on the CPU emulation of CUDA (cuda_emulation.h), against double
// references written here from the definition (softmax, the k largest with equal probabilities to the lower index,
// optional renormalization; each expert's SwiGLU and down product; the weighted sum in slot order plus the sigmoid-gated
// shared expert):
// - routing: the ids exactly (ties are made by rounding logits to quarters, and rows of equal logits), the weights within
//   1e-6 relative (F32 expf and sums against double);
// - alignment: offsets and slots exactly (integer work);
// - the whole pipeline: the output within 1e-5 relative to the largest |reference| of the case (F32 accumulation over
//   C and F of at most a few hundred terms of O(1) values, then two more products; F32 rounding is about 6e-8 a step).
// Cases cover several N, E, k, experts with no rows (the logits push every row away from some experts), more rows for
// one expert than a CTA takes at once (MOE_ROWS = 8), C and F that are not multiples of the 32-feature tile, and inputs of
// K = C or F a multiple of 4 (the 16-byte vector loads) or not (an element a lane); and quantized experts (int8 with a
// scale a row, group-wise int4 with a scale and a zero a group) against the values they stand for, with the same bound
// (the kernels dequantize in F32: one more rounding a weight).
// kernels.h is written by the test: the emulation, common.cuh, decode_gemm.cuh, moe.cu. Prints one line per check; the exit code is the
// number of failures.
#include "kernels.h"
#include <random>
#include <string>

static int failures = 0;
static void report(const std::string& what, bool ok, const std::string& detail = "")
{
    printf("%-64s %s%s\n", what.c_str(), detail.c_str(), ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

static std::string sci(double v) { char b[32]; snprintf(b, sizeof b, "%.2e", v); return b; }

// The reference routing of one row, in double.
static void route_ref(const float* z, int E, int k, bool normalize, int* ids, double* w)
{
    std::vector<double> p(E);
    double max = -INFINITY, sum = 0;
    for (int e = 0; e < E; e++) max = std::max(max, (double)z[e]);
    for (int e = 0; e < E; e++) sum += p[e] = std::exp((double)z[e] - max);
    std::vector<bool> taken(E, false);
    double chosen = 0;
    for (int s = 0; s < k; s++)
    {
        int best = -1;
        for (int e = 0; e < E; e++) if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
        taken[best] = true;
        ids[s] = best;
        w[s] = p[best] / sum;
        chosen += w[s];
    }
    if (normalize) for (int s = 0; s < k; s++) w[s] /= chosen;
}

// Logits (N, E): normal, rounded to quarters when `ties` (many equal values), every third row all equal when `ties`,
// and experts [E - avoid, E) pushed down by 30 so that no row picks them while k <= E - avoid.
static std::vector<float> draw_logits(int N, int E, bool ties, int avoid, unsigned seed)
{
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.f, 1.5f);
    std::vector<float> z((size_t)N * E);
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++)
        {
            float v = normal(rng);
            if (ties) v = std::round(v * 4.f) / 4.f;
            if (ties && n % 3 == 0) v = 0.5f;
            if (e >= E - avoid) v -= 30.f;
            z[(size_t)n * E + e] = v;
        }
    return z;
}

static void route_case(int N, int E, int k, bool normalize, bool ties, unsigned grid, unsigned block)
{
    auto z = draw_logits(N, E, ties, 0, 100 + N * 7 + E * 3 + k);
    std::vector<int> ids((size_t)N * k, -1);
    std::vector<float> w((size_t)N * k, -1.f);
    int norm = normalize ? 1 : 0;
    emu_launch(grid, block, [&] { moe_route_f32(z.data(), N, E, k, norm, ids.data(), w.data()); });
    int badIds = 0;
    double worst = 0;
    for (int n = 0; n < N; n++)
    {
        std::vector<int> rid(k);
        std::vector<double> rw(k);
        route_ref(&z[(size_t)n * E], E, k, normalize, rid.data(), rw.data());
        for (int s = 0; s < k; s++)
        {
            if (ids[(size_t)n * k + s] != rid[s]) badIds++;
            worst = std::max(worst, std::abs(w[(size_t)n * k + s] - rw[s]) / rw[s]);
        }
    }
    char name[128];
    snprintf(name, sizeof name, "route N=%d E=%d k=%d norm=%d ties=%d ids", N, E, k, (int)normalize, (int)ties);
    report(name, badIds == 0, badIds ? std::to_string(badIds) + " wrong " : "");
    snprintf(name, sizeof name, "route N=%d E=%d k=%d norm=%d ties=%d weights", N, E, k, (int)normalize, (int)ties);
    report(name, worst <= 1e-6, "max rel " + sci(worst) + " ");
}

static void align_case(int N, int E, int k, int avoid, unsigned block)
{
    std::mt19937 rng(7 + N + E);
    std::vector<int> ids((size_t)N * k);
    for (int n = 0; n < N; n++)            // k distinct experts of [0, E - avoid) a row
    {
        std::vector<int> pool(E - avoid);
        for (int e = 0; e < E - avoid; e++) pool[e] = e;
        std::shuffle(pool.begin(), pool.end(), rng);
        for (int s = 0; s < k; s++) ids[(size_t)n * k + s] = pool[s];
    }
    std::vector<int> offsets(E + 1, -1), slots((size_t)N * k, -1);
    int pairs = N * k;
    emu_launch(1, block, [&] { moe_align(ids.data(), pairs, E, offsets.data(), slots.data()); });
    std::vector<int> ro(E + 1, 0), rs;
    for (int e = 0; e < E; e++)
    {
        for (int i = 0; i < pairs; i++) if (ids[i] == e) rs.push_back(i);
        ro[e + 1] = (int)rs.size();
    }
    char name[128];
    snprintf(name, sizeof name, "align N=%d E=%d k=%d empty=%d threads=%u", N, E, k, avoid, block);
    report(name, offsets == ro && slots == rs);
}

static float uniform(std::mt19937& rng, float scale) { return std::uniform_real_distribution<float>(-scale, scale)(rng); }

// An expert weight (rows x cols) as the kernels read it: floating point (form 0), int8 with a scale a row (1), or group-wise
// int4 with a scale and a zero point a group of `group` columns (2), and the values it stands for in double (the reference).
struct ExpertWeight
{
    std::vector<float> f;             // form 0
    std::vector<bf16> h;              // form 0 in bf16 (the tensor-core products' weights)
    std::vector<signed char> q8;      // form 1
    std::vector<unsigned> q4;         // form 2: rows x cols / 8 words, column 8w + j in bits 4j .. 4j + 3
    std::vector<float> scales;        // forms 1 (a row) and 2 (a group)
    std::vector<signed char> zeros;   // form 2
    std::vector<double> ref;
    unsigned long long words[3] = {0, 0, 0};
};

static ExpertWeight draw_weight(std::mt19937& rng, int rows, int cols, int form, int group, float scale, bool half = false)
{
    ExpertWeight w;
    w.ref.resize((size_t)rows * cols);
    if (form == 0)
    {
        w.f.resize(w.ref.size());
        for (size_t i = 0; i < w.f.size(); i++) w.ref[i] = w.f[i] = uniform(rng, scale);
        w.words[0] = (unsigned long long)(uintptr_t)w.f.data();
        if (half)
        {
            w.h.resize(w.f.size());
            for (size_t i = 0; i < w.h.size(); i++) { w.h[i] = from_f<bf16>(w.f[i]); w.ref[i] = to_f(w.h[i]); }
            w.words[0] = (unsigned long long)(uintptr_t)w.h.data();
        }
        return w;
    }
    std::uniform_int_distribution<int> byte(-127, 127), nibble(0, 15);
    if (form == 1)
    {
        w.q8.resize(w.ref.size());
        w.scales.resize(rows);
        for (int r = 0; r < rows; r++)
        {
            w.scales[r] = scale / 127.f * (0.5f + std::abs(uniform(rng, 1.f)));
            for (int c = 0; c < cols; c++)
            {
                w.q8[(size_t)r * cols + c] = (signed char)byte(rng);
                w.ref[(size_t)r * cols + c] = (double)w.scales[r] * w.q8[(size_t)r * cols + c];
            }
        }
        w.words[0] = (unsigned long long)(uintptr_t)w.q8.data();
        w.words[1] = (unsigned long long)(uintptr_t)w.scales.data();
        return w;
    }
    int groups = (cols + group - 1) / group;
    w.q4.assign((size_t)rows * cols / 8, 0u);
    w.scales.resize((size_t)rows * groups);
    w.zeros.resize((size_t)rows * groups);
    for (auto& v : w.scales) v = scale / 7.5f * (0.5f + std::abs(uniform(rng, 1.f)));
    for (auto& v : w.zeros) v = (signed char)nibble(rng);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
        {
            unsigned q = (unsigned)nibble(rng);
            w.q4[((size_t)r * cols + c) / 8] |= q << (4 * (c % 8));
            size_t g = (size_t)r * groups + c / group;
            w.ref[(size_t)r * cols + c] = (double)w.scales[g] * ((double)q - w.zeros[g]);
        }
    w.words[0] = (unsigned long long)(uintptr_t)w.q4.data();
    w.words[1] = (unsigned long long)(uintptr_t)w.scales.data();
    w.words[2] = (unsigned long long)(uintptr_t)w.zeros.data();
    return w;
}

// E experts' gate and up (F x C) and down (C x F) weights of `form` (bf16 for form 0 when `half`), O(2 / sqrt(K)) so the
// hidden and output values stay O(1), and their table of addresses as the backends write it (3 words an expert for form 0,
// 9 for the quantized forms: each weight's values, scales and zeros).
struct Experts
{
    std::vector<ExpertWeight> gate, up, down;
    std::vector<unsigned long long> table;
};
static Experts draw_experts(std::mt19937& rng, int E, int C, int F, int form, int group, bool half = false)
{
    Experts x;
    int words = form == 0 ? 3 : 9;
    x.table.resize((size_t)words * E);
    float sc = 1.f / std::sqrt((float)C), sd = 1.f / std::sqrt((float)F);
    for (int e = 0; e < E; e++)
    {
        x.gate.push_back(draw_weight(rng, F, C, form, group, 2.f * sc, half));
        x.up.push_back(draw_weight(rng, F, C, form, group, 2.f * sc, half));
        x.down.push_back(draw_weight(rng, C, F, form, group, 2.f * sd, half));
        const ExpertWeight* parts[3] = { &x.gate[e], &x.up[e], &x.down[e] };
        for (int part = 0; part < 3; part++)
            for (int j = 0; j < words / 3; j++) x.table[(size_t)words * e + part * (words / 3) + j] = parts[part]->words[j];
    }
    return x;
}

// The whole device path: route, align, the experts' SwiGLU and down products, combine (with the shared expert when `shared`),
// over experts of `form` (0 floating point, 1 int8, 2 int4 in groups of `group`, which may leave a shorter last group); x
// `misaligned` by one float (the kernels' element-a-lane path, which the step's aligned buffers never take).
static void pipeline_case(int N, int E, int k, int C, int F, bool normalize, int avoid, bool shared, unsigned block, int form = 0, int group = 0,
    bool misaligned = false)
{
    unsigned seed = 1000 + N * 31 + E * 7 + C + F + form;
    std::mt19937 rng(seed);
    auto z = draw_logits(N, E, false, avoid, seed);
    std::vector<float> x((size_t)N * C), out((size_t)N * C), sh((size_t)N * C), gate(N);
    for (auto& v : x) v = uniform(rng, 1.f);
    for (auto& v : out) v = uniform(rng, 1.f);                 // the residual
    for (auto& v : sh) v = uniform(rng, 1.f);
    for (auto& v : gate) v = uniform(rng, 3.f);
    auto experts = draw_experts(rng, E, C, F, form, group);
    const auto &wg = experts.gate, &wu = experts.up, &wd = experts.down;
    const auto& table = experts.table;
    std::vector<double> ref(out.begin(), out.end());
    for (int n = 0; n < N; n++)
    {
        std::vector<int> rid(k);
        std::vector<double> rw(k);
        route_ref(&z[(size_t)n * E], E, k, normalize, rid.data(), rw.data());
        for (int s = 0; s < k; s++)
        {
            int e = rid[s];
            std::vector<double> h(F);
            for (int f = 0; f < F; f++)
            {
                double g = 0, u = 0;
                for (int c = 0; c < C; c++) { g += (double)x[(size_t)n * C + c] * wg[e].ref[(size_t)f * C + c]; u += (double)x[(size_t)n * C + c] * wu[e].ref[(size_t)f * C + c]; }
                h[f] = g / (1 + std::exp(-g)) * u;
            }
            for (int c = 0; c < C; c++)
            {
                double y = 0;
                for (int f = 0; f < F; f++) y += h[f] * wd[e].ref[(size_t)c * F + f];
                ref[(size_t)n * C + c] += rw[s] * y;
            }
        }
        if (shared)
            for (int c = 0; c < C; c++) ref[(size_t)n * C + c] += 1 / (1 + std::exp(-(double)gate[n])) * sh[(size_t)n * C + c];
    }
    std::vector<int> ids((size_t)N * k), offsets(E + 1), slots((size_t)N * k);
    std::vector<float> w((size_t)N * k), hidden((size_t)N * k * F, NAN), y((size_t)N * k * C, NAN);
    int norm = normalize ? 1 : 0, pairs = N * k;
    emu_launch(2, 32, [&] { moe_route_f32(z.data(), N, E, k, norm, ids.data(), w.data()); });
    emu_launch(1, 64, [&] { moe_align(ids.data(), pairs, E, offsets.data(), slots.data()); });
    int empty = 0;
    for (int e = 0; e < E; e++) empty += offsets[e + 1] == offsets[e];
    int most = 0;
    for (int e = 0; e < E; e++) most = std::max(most, offsets[e + 1] - offsets[e]);
    dim3 swiglu{(unsigned)E, (unsigned)((F + 31) / 32), 1}, down{(unsigned)E, (unsigned)((C + 31) / 32), 1};
    std::vector<float> shifted(x.size() + 1);
    std::copy(x.begin(), x.end(), shifted.begin() + 1);
    const float* xin = misaligned ? shifted.data() + 1 : x.data();
    if (form == 0)
    {
        emu_launch(swiglu, block, [&] { moe_expert_swiglu_f32(xin, table.data(), offsets.data(), slots.data(), k, C, F, hidden.data(), C); });
        emu_launch(down, block, [&] { moe_expert_down_f32(hidden.data(), table.data(), offsets.data(), slots.data(), C, F, y.data(), F); });
    }
    else if (form == 1)
    {
        emu_launch(swiglu, block, [&] { moe_expert_swiglu_q8_f32(xin, table.data(), offsets.data(), slots.data(), k, C, F, hidden.data(), C); });
        emu_launch(down, block, [&] { moe_expert_down_q8_f32(hidden.data(), table.data(), offsets.data(), slots.data(), C, F, y.data(), F); });
    }
    else
    {
        emu_launch(swiglu, block, [&] { moe_expert_swiglu_q4_f32(xin, table.data(), offsets.data(), slots.data(), k, C, F, hidden.data(), group); });
        emu_launch(down, block, [&] { moe_expert_down_q4_f32(hidden.data(), table.data(), offsets.data(), slots.data(), C, F, y.data(), group); });
    }
    emu_launch(3, 64, [&] { moe_combine_f32(y.data(), w.data(), out.data(), shared ? sh.data() : nullptr, shared ? gate.data() : nullptr, N, k, C); });
    double scale = 0, worst = 0;
    for (double v : ref) scale = std::max(scale, std::abs(v));
    for (size_t i = 0; i < ref.size(); i++) worst = std::max(worst, std::abs(out[i] - ref[i]) / scale);
    char name[200];
    const char* forms[] = { "", " int8", " int4" };
    char groupText[32] = "";
    if (form == 2) snprintf(groupText, sizeof groupText, " group=%d", group);
    snprintf(name, sizeof name, "experts%s N=%d E=%d k=%d C=%d F=%d%s norm=%d shared=%d threads=%u%s", forms[form], N, E, k, C, F, groupText, (int)normalize,
        (int)shared, block, misaligned ? " misaligned x" : "");
    report(name, worst <= 1e-5 && (avoid == 0 || empty >= avoid),
        "empty experts " + std::to_string(empty) + ", most rows " + std::to_string(most) + ", max rel " + sci(worst) + " ");
}

// The combine's order: a row's slots 1, 1e8, -1e8 (weights 1, residual 0) give 0 in slot order (1 + 1e8 rounds to 1e8 in
// F32) and 1 if the large ones meet first; the mirrored row gives 1. Exact.
static void combine_order()
{
    std::vector<float> y = { 1.f, 1e8f, -1e8f, -1e8f, 1e8f, 1.f }, w(6, 1.f), out(2, 0.f);
    emu_launch(1, 32, [&] { moe_combine_f32(y.data(), w.data(), out.data(), nullptr, nullptr, 2, 3, 1); });
    report("combine adds the slots in slot order", out[0] == 0.f && out[1] == 1.f);
}

float dg_shared[1 << 15];   // 128 KB: the tensor-core products' stages (97 KB at 64 rows of x) when they run without a cluster

// The tensor-core expert products (moe_gemm_swiglu_*, moe_gemm_down_*; bf16 rows, the emulation's mma.sync stand-in) over
// experts of `form` (0 bf16, 1 int8, 2 int4 by group sums in groups of `group`, a multiple of 64), K in `slices` slices
// (a cluster of CTAs a row block, emulated together): the route and align kernels give the pairs, then the two products
// against a double reference over the bf16 x and the weights' values (bf16-rounded for form 0; the hidden rows unrounded,
// so the bound also takes the kernel's bf16 hidden). Tolerance 8e-3 of the largest |output| of each product, as the decode
// products' (decode_gemm.cpp): bf16 stores (2^-9 relative) and fp32 sums; a wrong row, column, expert or slice is O(1).
// Every hidden row and every slot's output row must be written (NaN-poisoned before), none past them.
static void gemm_case(int N, int E, int k, int C, int F, int avoid, int slices, int form = 0, int group = 0)
{
    if (C % 64 || F % 64 || (C / 64) % slices || (F / 64) % slices || (form == 2 && group % 64))
    {
        printf("gemm_case: C %d and F %d must be k-tiles of 64 that %d slices divide (and int4 groups multiples of 64)\n", C, F, slices);
        failures++;
        return;
    }
    unsigned seed = 5000 + N * 31 + E * 7 + C + F + form * 3 + slices;
    std::mt19937 rng(seed);
    auto z = draw_logits(N, E, false, avoid, seed);
    std::vector<bf16> x((size_t)N * C);
    for (auto& v : x) v = from_f<bf16>(uniform(rng, 1.f));
    auto experts = draw_experts(rng, E, C, F, form, group, /*half:*/ true);
    const auto &wg = experts.gate, &wu = experts.up, &wd = experts.down;
    const auto& table = experts.table;
    std::vector<int> ids((size_t)N * k), offsets(E + 1), slots((size_t)N * k);
    std::vector<float> w((size_t)N * k);
    int norm = 1, pairs = N * k;
    emu_launch(2, 32, [&] { moe_route_f32(z.data(), N, E, k, norm, ids.data(), w.data()); });
    emu_launch(1, 64, [&] { moe_align(ids.data(), pairs, E, offsets.data(), slots.data()); });
    int most = 0, empty = 0;
    for (int e = 0; e < E; e++) { most = std::max(most, offsets[e + 1] - offsets[e]); empty += offsets[e + 1] == offsets[e]; }
    // The reference: hidden row p (pair p of the aligned list) and the output row of slot slots[p].
    std::vector<double> rh((size_t)pairs * F), ry((size_t)pairs * C);
    for (int e = 0; e < E; e++)
        for (int p = offsets[e]; p < offsets[e + 1]; p++)
        {
            int n = slots[p] / k;
            for (int f = 0; f < F; f++)
            {
                double g = 0, u = 0;
                for (int c = 0; c < C; c++) { g += (double)to_f(x[(size_t)n * C + c]) * wg[e].ref[(size_t)f * C + c]; u += (double)to_f(x[(size_t)n * C + c]) * wu[e].ref[(size_t)f * C + c]; }
                rh[(size_t)p * F + f] = g / (1 + std::exp(-g)) * u;
            }
            for (int c = 0; c < C; c++)
            {
                double y = 0;
                for (int f = 0; f < F; f++) y += rh[(size_t)p * F + f] * wd[e].ref[(size_t)c * F + f];
                ry[(size_t)slots[p] * C + c] = y;
            }
        }
    const bf16 poison = from_f<bf16>(NAN);
    std::vector<bf16> hidden((size_t)pairs * F + 64, poison), y((size_t)pairs * C + 64, poison);
    emu_shared_base = (unsigned char*)dg_shared;
    auto launch = [&](int blocks, auto kernel) {
        if (slices == 1) emu_launch(dim3{1, (unsigned)blocks, (unsigned)E}, 128, kernel);
        else emu_launch_cluster(dim3{(unsigned)slices, (unsigned)blocks, (unsigned)E}, (unsigned)slices, 128, kernel);
    };
    int sblocks = (F + 63) / 64, dblocks = (C + 127) / 128, kk = k, c_ = C, f_ = F, gr = group;
    if (form == 0)
    {
        launch(sblocks, [&] { moe_gemm_swiglu_bf16(x.data(), table.data(), offsets.data(), slots.data(), kk, c_, f_, hidden.data(), gr); });
        launch(dblocks, [&] { moe_gemm_down_bf16(hidden.data(), table.data(), offsets.data(), slots.data(), c_, f_, y.data(), gr); });
    }
    else if (form == 1)
    {
        launch(sblocks, [&] { moe_gemm_swiglu_q8_bf16(x.data(), table.data(), offsets.data(), slots.data(), kk, c_, f_, hidden.data(), gr); });
        launch(dblocks, [&] { moe_gemm_down_q8_bf16(hidden.data(), table.data(), offsets.data(), slots.data(), c_, f_, y.data(), gr); });
    }
    else
    {
        launch(sblocks, [&] { moe_gemm_swiglu_q4_bf16(x.data(), table.data(), offsets.data(), slots.data(), kk, c_, f_, hidden.data(), gr); });
        launch(dblocks, [&] { moe_gemm_down_q4_bf16(hidden.data(), table.data(), offsets.data(), slots.data(), c_, f_, y.data(), gr); });
    }
    auto relative = [](const std::vector<double>& ref, const std::vector<bf16>& got) {
        double scale = 0, worst = 0;
        for (double v : ref) scale = std::max(scale, std::abs(v));
        for (size_t i = 0; i < ref.size(); i++)
        {
            double g = to_f(got[i]);
            worst = std::isfinite(g) ? std::max(worst, std::abs(g - ref[i]) / scale) : INFINITY;
        }
        return worst;
    };
    double eh = relative(rh, hidden), ey = relative(ry, y);
    bool past = true;                                             // nothing written past the pairs' rows
    for (size_t i = (size_t)pairs * F; i < hidden.size(); i++) past &= std::isnan(to_f(hidden[i]));
    for (size_t i = (size_t)pairs * C; i < y.size(); i++) past &= std::isnan(to_f(y[i]));
    char name[200];
    const char* forms[] = { "", " int8", " int4" };
    char groupText[32] = "";
    if (form == 2) snprintf(groupText, sizeof groupText, " group=%d", group);
    snprintf(name, sizeof name, "tensor-core experts%s N=%d E=%d k=%d C=%d F=%d%s slices=%d", forms[form], N, E, k, C, F, groupText, slices);
    report(name, eh <= 8e-3 && ey <= 8e-3 && past && (avoid == 0 || empty >= avoid),
        "empty experts " + std::to_string(empty) + ", most rows " + std::to_string(most) + ", hidden " + sci(eh) + ", out " + sci(ey) + " ");
}

int main()
{
    combine_order();
    route_case(37, 8, 2, true, false, 2, 32);
    route_case(37, 8, 2, false, true, 1, 64);
    for (int k = 1; k <= 5; k++) route_case(12, 5, k, k % 2 == 1, true, 1, 32);
    route_case(5, 64, 8, true, true, 1, 32);
    align_case(13, 8, 2, 3, 64);
    align_case(40, 70, 4, 10, 64);
    align_case(1, 4, 4, 0, 32);
    align_case(600, 128, 8, 5, 256);       // 4,800 pairs over 128 experts: 16 experts a warp, 150 reads of 32 ids each
    align_case(70, 160, 8, 0, 1024);       // the backend's 1,024 threads: 32 warps, five experts each
    pipeline_case(13, 6, 2, 50, 45, true, 2, false, 64);
    pipeline_case(40, 4, 2, 33, 72, false, 0, true, 64);
    pipeline_case(1, 8, 2, 64, 100, true, 0, false, 256);
    pipeline_case(9, 5, 5, 40, 20, true, 0, true, 64);
    // Quantized experts: int8 with K a multiple of 8 (8 bytes a lane) and not (C = 50: an element a lane); int4 in groups
    // that divide K, that leave a shorter last group (C = 72 and F = 40 in groups of 32), and one group a row (F = 96 in 128).
    pipeline_case(13, 6, 2, 64, 40, true, 2, false, 64, 1);
    pipeline_case(11, 4, 2, 50, 45, false, 0, true, 64, 1);
    pipeline_case(13, 6, 2, 64, 48, true, 2, false, 64, 2, 16);
    pipeline_case(40, 4, 2, 72, 40, false, 0, true, 64, 2, 32);
    pipeline_case(1, 8, 2, 128, 96, true, 0, false, 256, 2, 128);
    pipeline_case(7, 4, 2, 64, 32, true, 0, false, 64, 2, 32, true);
    // Tensor-core experts: experts with a few rows (x's 16-row tiles) and none, 17-32 rows (32-row tiles), 33-64 (64-row
    // tiles), and more than 64 (80 rows: a chunk of 64, then one of 16); K in one slice and in clusters of 2 and 4 (the
    // host's slices divide K's tiles); the down product's C past the 128-row block (C = 192); int8 and int4 in groups of 64
    // and 128 (a group of 128 straddling two slices at K = 256 in 4).
    gemm_case(13, 6, 2, 128, 192, 2, 1);
    gemm_case(50, 2, 1, 64, 128, 0, 1);
    gemm_case(40, 2, 2, 256, 128, 0, 2);
    gemm_case(80, 1, 1, 64, 64, 0, 1);
    gemm_case(20, 4, 2, 128, 128, 1, 2, 1);
    gemm_case(33, 3, 2, 256, 256, 0, 4, 2, 128);
    gemm_case(24, 3, 2, 192, 128, 0, 1, 2, 64);
    gemm_case(9, 4, 2, 128, 256, 1, 1, 2, 128);
    return failures;
}
