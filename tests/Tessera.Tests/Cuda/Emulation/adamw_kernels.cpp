// The split-master kernels of adamw.cu (split_masters, join_masters, adamw_split and adamw_split_vec4 with bf16 and f32
// gradients) on the CPU emulation of CUDA (cuda_emulation.h), against the separate-master kernels of the same file
// (adamw, adamw_vec4 with a bf16 copy) on the same inputs: the split is integer arithmetic on the master's bits and the update
// is adamw_one in both, so every comparison is exact (tolerance 0). The emulation's float operations are IEEE single
// operations, uncontracted (ISO C++), like the device's mul.rn/add.rn/div.rn/sqrt.rn and the CPU backend's C#.
// Prints one line per check; the exit code is the number of failures. kernels.h is written by the test: the emulation,
// common.cuh, adamw.cu.
#include "kernels.h"
#include <random>

static int failures = 0;
static void report(const char* what, long long bad, long long where)
{
    if (bad == 0) printf("%-60s ok\n", what);
    else { printf("%-60s FAIL (%lld elements, first %lld)\n", what, bad, where); failures++; }
}

static unsigned bits(float f) { return __float_as_uint(f); }

// Split, then join, over random bit patterns and edges: every pattern comes back; the high half is round to nearest even
// (from_f<bf16>) except at exact ties, where it is one more.
static void round_trip(int n, unsigned grid)
{
    std::mt19937 rng(11 + n);
    std::vector<float> p(n);
    const unsigned edges[] = { 0x00000000u, 0x80000000u, 0x00000001u, 0x0000FFFFu, 0x3F808000u, 0x3F818000u, 0xBF808000u,
                               0x3F7FFFFFu, 0xBF7FFFFFu, 0x7F7F7FFFu, 0x00800000u, 0x7F800000u, 0xFF800000u };
    for (int i = 0; i < n; i++) p[i] = __uint_as_float(i < 13 ? edges[i] : (i % 4 == 0 ? (rng() & 0xFFFF0000u) | 0x8000u : rng()));
    std::vector<unsigned short> hi(n), lo(n);
    std::vector<float> back(n);
    long long n64 = n;
    emu_launch(grid, 64, [&] { split_masters(p.data(), hi.data(), lo.data(), n64); });
    emu_launch(grid, 64, [&] { join_masters(hi.data(), lo.data(), back.data(), n64); });
    long long bad = 0, first = -1, badRound = 0, firstRound = -1;
    for (int i = 0; i < n; i++)
    {
        unsigned u = bits(p[i]);
        if (bits(back[i]) != u) { if (!bad++) first = i; }
        if ((u & 0x7FFFFFFFu) > 0x7F800000u || (u & 0x7FFFFFFFu) >= 0x7F7F8000u) continue;   // NaN, overflow: out of scope
        unsigned short rne = from_f<bf16>(p[i]).x;
        unsigned short expect = (u & 0xFFFFu) == 0x8000u ? (unsigned short)((u >> 16) + 1) : rne;
        if (hi[i] != expect) { if (!badRound++) firstRound = i; }
    }
    char name[96];
    snprintf(name, sizeof name, "split/join n=%d grid=%u round trip", n, grid); report(name, bad, first);
    snprintf(name, sizeof name, "split/join n=%d grid=%u high half", n, grid); report(name, badRound, firstRound);
}

// Six AdamW steps: adamw(_vec4)_<G> on separate masters with a bf16 copy against adamw_split(_vec4)_<G>.
template <typename G> static void update(int n, bool vec4, bool decay, bool clip, unsigned grid, const char* gname)
{
    std::mt19937 rng(5 + n + vec4);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> p(n), m(n, 0.f), v(n, 0.f), sm(n, 0.f), sv(n, 0.f), joined(n);
    std::vector<unsigned short> copy(n), hi(n), lo(n);
    for (int i = 0; i < n; i++) p[i] = 0.05f * u(rng);
    long long n64 = n;
    emu_launch(grid, 64, [&] { split_masters(p.data(), hi.data(), lo.data(), n64); });
    const double beta1 = 0.9, beta2 = 0.95, rate = 3e-3;
    long long badP = 0, badM = 0, badV = 0, badHi = 0, first = -1;
    for (int t = 1; t <= 6; t++)
    {
        std::vector<G> g(n);
        double sumsq = 0;
        for (int i = 0; i < n; i++) { g[i] = from_f<G>(0.3f * u(rng)); double x = to_f(g[i]); sumsq += x * x; }
        float ss = (float)sumsq;
        const float* pss = clip ? &ss : nullptr;
        // The host's constants (CudaBackend.AdamW / AdamWSplit).
        float lr = (float)rate, b1 = (float)beta1, b2 = (float)beta2, eps = 1e-8f, wd = decay ? 0.1f : 0.f;
        float ob1 = (float)(1 - beta1), ob2 = (float)(1 - beta2);
        float c1 = (float)(1.0 / (1.0 - std::pow(beta1, t))), c2 = (float)(1.0 / (1.0 - std::pow(beta2, t)));
        float maxNorm = clip ? 0.5f : 0.f;
        if (vec4)
        {
            emu_launch(grid, 64, [&] { adamw_vec4<G>(p.data(), g.data(), m.data(), v.data(), copy.data(), 1, n64, lr, b1, ob1, b2, ob2, eps, wd, c1, c2, pss, maxNorm); });
            emu_launch(grid, 64, [&] { adamw_split_vec4<G>(hi.data(), lo.data(), g.data(), sm.data(), sv.data(), n64, lr, b1, ob1, b2, ob2, eps, wd, c1, c2, pss, maxNorm); });
        }
        else
        {
            emu_launch(grid, 64, [&] { adamw<G>(p.data(), g.data(), m.data(), v.data(), copy.data(), 1, n64, lr, b1, ob1, b2, ob2, eps, wd, c1, c2, pss, maxNorm); });
            emu_launch(grid, 64, [&] { adamw_split<G>(hi.data(), lo.data(), g.data(), sm.data(), sv.data(), n64, lr, b1, ob1, b2, ob2, eps, wd, c1, c2, pss, maxNorm); });
        }
        emu_launch(grid, 64, [&] { join_masters(hi.data(), lo.data(), joined.data(), n64); });
        for (int i = 0; i < n; i++)
        {
            bool differs = false;
            if (bits(joined[i]) != bits(p[i])) { badP++; differs = true; }
            if (bits(sm[i]) != bits(m[i])) { badM++; differs = true; }
            if (bits(sv[i]) != bits(v[i])) { badV++; differs = true; }
            if (hi[i] != copy[i] && (bits(p[i]) & 0xFFFFu) != 0x8000u) { badHi++; differs = true; }
            if (differs && first < 0) first = i;
        }
    }
    char name[128];
    snprintf(name, sizeof name, "adamw_split%s %s n=%d decay=%d clip=%d grid=%u", vec4 ? "_vec4" : "", gname, n, decay, clip, grid);
    report(name, badP + badM + badV + badHi, first);
}

// adamw_items (one launch over a table of work items: IBackend.AdamWRanges) against adamw_vec4 launched range by range with
// each range's weight decay, over six steps with a bf16 copy: parameters, moments and copies bit for bit. The ranges alternate
// decay, leave gaps (untouched: they must keep their values), and one spans several items of `itemElements`.
static void items(unsigned grid, long long itemElements)
{
    const int n = 12288;
    struct R { long long at, len; bool decay; };
    const R ranges[] = { {0, 8, true}, {8, 4, false}, {16, 4100, true}, {4116, 12, false}, {4200, 8000, true}, {12200, 88, false} };
    std::vector<long long> table;
    for (const R& r : ranges)
        for (long long at = r.at; at < r.at + r.len; at += itemElements)
        {
            long long count = std::min(itemElements, r.at + r.len - at);
            table.push_back(at); table.push_back(count * 2 + (r.decay ? 1 : 0));
        }
    const int count = (int)(table.size() / 2);
    std::mt19937 rng(29 + grid);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> p(n), m(n, 0.f), v(n, 0.f);
    for (int i = 0; i < n; i++) p[i] = 0.05f * u(rng);
    std::vector<float> p2 = p, m2 = m, v2 = v;
    std::vector<unsigned short> copy(n, 7), copy2(n, 7);
    const double beta1 = 0.9, beta2 = 0.95, rate = 3e-3;
    for (int t = 1; t <= 6; t++)
    {
        std::vector<bf16> g(n);
        double sumsq = 0;
        for (int i = 0; i < n; i++) { g[i] = from_f<bf16>(0.3f * u(rng)); double x = to_f(g[i]); sumsq += x * x; }
        float ss = (float)sumsq, maxNorm = 0.5f;
        float lr = (float)rate, b1 = (float)beta1, b2 = (float)beta2, eps = 1e-8f, wd = 0.1f;
        float ob1 = (float)(1 - beta1), ob2 = (float)(1 - beta2);
        float c1 = (float)(1.0 / (1.0 - std::pow(beta1, t))), c2 = (float)(1.0 / (1.0 - std::pow(beta2, t)));
        emu_launch(grid, 64, [&] { adamw_items<bf16>(table.data(), count, p.data(), g.data(), m.data(), v.data(), copy.data(), 1, lr, b1, ob1, b2, ob2, eps, wd, c1, c2, &ss, maxNorm); });
        for (const R& r : ranges)
        {
            long long len = r.len; float wdr = r.decay ? wd : 0.f;
            emu_launch(2, 64, [&] { adamw_vec4<bf16>(p2.data() + r.at, g.data() + r.at, m2.data() + r.at, v2.data() + r.at, copy2.data() + r.at, 1, len, lr, b1, ob1, b2, ob2, eps, wdr, c1, c2, &ss, maxNorm); });
        }
    }
    long long bad = 0, first = -1;
    for (int i = 0; i < n; i++)
        if (bits(p[i]) != bits(p2[i]) || bits(m[i]) != bits(m2[i]) || bits(v[i]) != bits(v2[i]) || copy[i] != copy2[i]) { if (!bad++) first = i; }
    char name[128];
    snprintf(name, sizeof name, "adamw_items grid=%u items=%d = adamw_vec4 by range", grid, count);
    report(name, bad, first);
}

int main()
{
    round_trip(4099, 3);
    round_trip(200, 1);
    update<bf16>(1001, false, true, true, 3, "bf16");
    update<bf16>(4096, true, true, true, 2, "bf16");
    update<bf16>(4096, true, false, false, 5, "bf16");
    update<float>(1001, false, false, true, 2, "f32");
    update<float>(2048, true, true, false, 3, "f32");
    items(3, 1024);     // 17 items over 3 blocks
    items(40, 16384);   // more blocks than the 6 items
    return failures;
}
