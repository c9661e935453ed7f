// sampling.cu's sample_rows on the CPU emulation of CUDA. Each case draws rows of logits from a fixed seed (normal
// logits times 3; or rounded to quarters, so that many tie; or rounded to bf16 and read by the bf16 instantiation; or
// rows holding NaN and infinities), gives each row its own temperature, top-k, top-p, seed and position, runs the kernel
// with the case's block size and writes the case to sample_<n>.bin (V, ld, rows, dtype, the parameters, positions, the
// logits as floats and the kernel's ids) for KernelEmulationTests to compare with Tessera.Tensors.TokenSampling, the
// definition; then token_logprobs at the drawn ids (the top 5), which the test compares with LogProbabilities. Here it
// checks only what needs no reference: every id is a token of the row that is not NaN, and a row of temperature 0 gives
// the argmax.
//
// The survivors' list (sampling.cu's top): each case's line says in how many rows (a cluster: CTA rows) the survivors
// fitted the shared list and in how many the draw went on over the row (the kernels' emu_tally), and the last line checks
// that the cases took both paths. The test builds this program twice: with the kernels' capacity (4,096: the near-flat
// one-CTA rows overflow it) and with -DSAMPLE_SURVIVORS=64, where most rows overflow and a cluster's CTAs take different
// paths in one row.
//
// kernels.h is written by the test: the emulation, common.cuh, sampling.cu. Prints one line per case; the exit code is
// the number of failures.
#include "kernels.h"
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

static int failures = 0;
static long long fitted = 0, overflowed = 0;   // over every case
static void report(const std::string& what, bool ok, const std::string& detail = "")
{
    printf("%-64s %s%s\n", what.c_str(), detail.c_str(), ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

static unsigned short to_bf16_bits(float v)
{
    unsigned u;
    std::memcpy(&u, &v, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
static float from_bf16_bits(unsigned short b)
{
    unsigned u = (unsigned)b << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
static int bits(float f) { int i; std::memcpy(&i, &f, 4); return i; }

enum Kind { Normal, Quarters, Bf16, Special, Flat, Peaked };

// ctas 0: sample_rows (one CTA a row); else sample_rows_cluster in clusters of ctas CTAs, `clusters` of them walking the rows.
static void run_case(int n, const char* name, Kind kind, int V, int ld, int rows, unsigned block, unsigned seed,
                     unsigned ctas = 0, unsigned clusters = 0)
{
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.f, 3.f);
    std::vector<float> logits((size_t)rows * ld, 0.f);
    std::vector<int> params((size_t)rows * 5), positions(rows), ids(rows, -1);
    const float temperatures[] = {0.f, 0.7f, 1.f, 1.5f, 0.25f};
    const int top_ks[] = {0, 1, 5, 50, 0, 3};
    const float top_ps[] = {1.f, 0.9f, 0.5f, 1.f, 0.99f, 0.2f, 1.f};
    // Flat and peaked rows take a server's mix: temperature 1 (or 0.7), top-p 0.95, top-k 50, both, neither.
    const float server_temperatures[] = {1.f, 1.f, 0.7f};
    const int server_top_ks[] = {0, 50, 0, 1, 50};
    const float server_top_ps[] = {0.95f, 1.f, 1.f, 0.5f, 0.95f, 0.95f};
    const bool server = kind == Flat || kind == Peaked;
    std::uniform_real_distribution<float> uniform(0.f, 1.f);
    for (int r = 0; r < rows; r++)
    {
        float* row = &logits[(size_t)r * ld];
        for (int i = 0; i < V; i++)
        {
            float v = normal(rng);
            if (kind == Quarters) v = std::round(v * 4.f) / 4.f;
            if (kind == Bf16) v = from_bf16_bits(to_bf16_bits(v));
            if (kind == Flat) v = 0.02f * v;                               // random-init-like: every token about as likely
            if (kind == Peaked) v = uniform(rng) < 0.001f ? 12.f + v : v;  // a few tokens far above the rest
            row[i] = v;
        }
        if (kind == Special)
        {
            const float nan = std::nanf(""), inf = INFINITY;
            switch (r % 6)
            {
            case 0: for (int i = 0; i < V; i += 7) row[i] = nan; break;                 // NaN never drawn
            case 1: for (int i = 0; i < V; i += 3) row[i] = -inf; break;                // masked tokens
            case 2: for (int i = 0; i < V; i++) row[i] = nan; break;                    // all NaN: 0
            case 3: row[V / 2] = inf; break;                                             // +inf: the argmax
            case 4: for (int i = 0; i < V; i++) row[i] = i == V - 3 ? 1.f : -inf; break; // one finite token
            case 5: for (int i = 0; i < V; i++) row[i] = 2.f; break;                    // every logit tied
            }
        }
        int* p = &params[(size_t)r * 5];
        p[0] = bits(server ? server_temperatures[r % 3] : temperatures[r % 5]);
        p[1] = server ? server_top_ks[r % 5] : top_ks[r % 6];
        p[2] = bits(server ? server_top_ps[r % 6] : top_ps[r % 7]);
        const unsigned long long s = 0x1234567ull * (unsigned long long)(r + 1) + seed;
        p[3] = (int)(unsigned)s;
        p[4] = (int)(unsigned)(s >> 32);
        positions[r] = 17 * r + 3;
    }
    std::vector<unsigned short> half;
    if (kind == Bf16)
    {
        half.resize(logits.size());
        for (size_t i = 0; i < logits.size(); i++) half[i] = to_bf16_bits(logits[i]);
        const bf16* x = reinterpret_cast<const bf16*>(half.data());
        if (ctas > 0)
            emu_launch_cluster(clusters * ctas, ctas, block, [&] { sample_rows_cluster_bf16(x, (long long)ld, V, rows, params.data(), positions.data(), ids.data()); });
        else
            emu_launch((unsigned)rows, block, [&] { sample_rows_bf16(x, (long long)ld, V, params.data(), positions.data(), ids.data()); });
    }
    else if (ctas > 0)
        emu_launch_cluster(clusters * ctas, ctas, block, [&] { sample_rows_cluster_f32(logits.data(), (long long)ld, V, rows, params.data(), positions.data(), ids.data()); });
    else
        emu_launch((unsigned)rows, block, [&] { sample_rows_f32(logits.data(), (long long)ld, V, params.data(), positions.data(), ids.data()); });
    const long long fit = emu_tallies[0].exchange(0), over = emu_tallies[1].exchange(0);
    fitted += fit;
    overflowed += over;

    bool ok = true;
    for (int r = 0; r < rows && ok; r++)
    {
        const float* row = &logits[(size_t)r * ld];
        int id = ids[r];
        bool all_nan = true;
        for (int i = 0; i < V; i++) all_nan &= std::isnan(row[i]);
        if (id < 0 || id >= V || (!all_nan && std::isnan(row[id])) || (all_nan && id != 0)) { ok = false; break; }
        float t;
        std::memcpy(&t, &params[(size_t)r * 5], 4);
        if (t == 0.f)
        {
            int best = -1;
            for (int i = 0; i < V; i++) if (!std::isnan(row[i]) && (best < 0 || row[i] > row[best])) best = i;
            ok = id == (best < 0 ? 0 : best);
        }
    }
    // token_logprobs over the same rows at the drawn ids: the chosen token's and the top 5's log-probabilities.
    const int count = 5;
    std::vector<float> logprobs((size_t)rows * (1 + count), 0.f);
    std::vector<int> top((size_t)rows * count, -1);
    if (kind == Bf16)
        emu_launch((unsigned)rows, block, [&] { token_logprobs_bf16(reinterpret_cast<const bf16*>(half.data()), (long long)ld, V, ids.data(), count, logprobs.data(), top.data()); });
    else
        emu_launch((unsigned)rows, block, [&] { token_logprobs_f32(logits.data(), (long long)ld, V, ids.data(), count, logprobs.data(), top.data()); });

    FILE* f = fopen(("sample_" + std::to_string(n) + ".bin").c_str(), "wb");
    int header[4] = {V, ld, rows, kind == Bf16 ? 1 : 0};
    fwrite(header, 4, 4, f);
    fwrite(params.data(), 4, params.size(), f);
    fwrite(positions.data(), 4, positions.size(), f);
    fwrite(logits.data(), 4, logits.size(), f);
    fwrite(ids.data(), 4, ids.size(), f);
    fwrite(&count, 4, 1, f);
    fwrite(logprobs.data(), 4, logprobs.size(), f);
    fwrite(top.data(), 4, top.size(), f);
    fclose(f);
    report(name, ok, "survivors listed " + std::to_string(fit) + ", over the row " + std::to_string(over) + " ");
}

int main()
{
    run_case(0, "sample_rows f32 V=1000 ld=1024 rows=30 block=128", Normal, 1000, 1024, 30, 128, 11);
    run_case(1, "sample_rows f32 V=4099 rows=24 block=256 quarters", Quarters, 4099, 4099, 24, 256, 12);
    run_case(2, "sample_rows bf16 V=3000 ld=3008 rows=12 block=1024", Bf16, 3000, 3008, 12, 1024, 13);
    run_case(3, "sample_rows f32 V=999 rows=24 block=64 special", Special, 999, 999, 24, 64, 14);
    run_case(4, "sample_rows f32 V=40 rows=30 block=128 short rows", Normal, 40, 40, 30, 128, 15);
    // sample_rows_cluster: a row over clusters of 1 to 8 CTAs, fewer clusters than rows (they walk the rows).
    run_case(5, "sample_rows_cluster f32 V=1000 ld=1024 rows=30 block=64 ctas=2", Normal, 1000, 1024, 30, 64, 11, 2, 7);
    run_case(6, "sample_rows_cluster f32 V=2099 rows=18 block=64 ctas=4 quarters", Quarters, 2099, 2099, 18, 64, 12, 4, 5);
    run_case(7, "sample_rows_cluster bf16 V=3000 ld=3008 rows=6 block=64 ctas=8", Bf16, 3000, 3008, 6, 64, 13, 8, 3);
    run_case(8, "sample_rows_cluster f32 V=999 rows=24 block=64 ctas=2 special", Special, 999, 999, 24, 64, 14, 2, 24);
    run_case(9, "sample_rows_cluster f32 V=40 rows=30 block=64 ctas=8 short rows", Normal, 40, 40, 30, 64, 15, 8, 4);
    run_case(10, "sample_rows_cluster f32 V=6000 rows=6 block=64 ctas=4 flat", Flat, 6000, 6000, 6, 64, 16, 4, 3);
    run_case(11, "sample_rows_cluster f32 V=6001 rows=6 block=64 ctas=8 peaked", Peaked, 6001, 6001, 6, 64, 17, 8, 6);
    run_case(12, "sample_rows_cluster f32 V=77 rows=256 block=32 ctas=2", Normal, 77, 77, 256, 32, 18, 2, 16);
    run_case(13, "sample_rows_cluster f32 V=3 rows=1 block=32 ctas=1", Normal, 3, 3, 1, 32, 19, 1, 1);
    run_case(14, "sample_rows_cluster f32 V=2500 rows=6 block=96 ctas=1 flat", Flat, 2500, 2500, 6, 96, 20, 1, 2);
    // One CTA a row on a server's rows (a near-flat row at top-p 0.95 overflows the list), bf16 rows of an odd length both
    // 16-byte aligned (ld 3008) and not (ld 3003: the rows start anywhere), and a cluster's bf16 runs with a tail.
    run_case(15, "sample_rows f32 V=6000 rows=6 block=128 flat", Flat, 6000, 6000, 6, 128, 21);
    run_case(16, "sample_rows f32 V=6001 rows=6 block=128 peaked", Peaked, 6001, 6001, 6, 128, 22);
    run_case(17, "sample_rows bf16 V=3001 ld=3003 rows=12 block=64", Bf16, 3001, 3003, 12, 64, 23);
    run_case(18, "sample_rows_cluster bf16 V=3001 ld=3008 rows=12 block=64 ctas=4", Bf16, 3001, 3008, 12, 64, 24, 4, 3);
    report("the survivors fitted in some rows and not in others", fitted > 0 && overflowed > 0,
           "listed " + std::to_string(fitted) + ", over the row " + std::to_string(overflowed) + " ");
    return failures;
}
