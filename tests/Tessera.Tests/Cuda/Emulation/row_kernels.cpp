// The row kernels of issue 18 in their f32 instantiation on the CPU emulation of CUDA (cuda_emulation.h), against double
// references: SwiGLU on the halves of one (rows, 2F) product (16-byte vectors, and one element per thread when F or the
// base pointer rules vectors out), RMSNorm with the row in registers (forward, backward with per-block weight-gradient
// partials summed as column_reduce does; grids smaller and larger than the rows), RoPE from a table of angles on the q and k
// heads of a (B, T, H + 2K, D) activation (16-byte vectors, and one pair per thread when D/2 or the base pointer rules vectors
// out; both must give the same bits). Prints one line per check; the exit code is the number of failures. kernels.h is written
// by the test: the emulation, common.cuh, elementwise.cu, norm.cu, rope.cu, reduce.cu. column_reduce: sums of partials.
#include "kernels.h"
#include "emulation_check.h"
#include <random>

float lnacc[1 << 16];   // layernorm_backward_rows' dynamic shared memory (extern __shared__; the emulated blocks run in turn)
Bytes16 staged_row[1 << 12];   // cross_entropy's staged row (dynamic shared memory; the emulated blocks run in turn)
alignas(16) float rope_row_angles[1 << 14];   // rope_append_rows' angles of its row, norm_rope_append_rows' staged heads after
                                              // them (dynamic shared memory; the host allows 48 KB)
static double sig(double g) { return 1 / (1 + std::exp(-g)); }
static void check(const char* what, const std::vector<double>& e, const float* a, size_t n, double tol)
{
    report_error(what, 40, errors_of(e.data(), a, n).relative(), tol);
}
static float* alloc(size_t n) { float* p = (float*)aligned_alloc(64, ((n * 4 + 63) / 64) * 64 + 64); for (size_t i = 0; i < n + 16; i++) p[i] = NAN; return p; }

static void swiglu(int rows, int f, int offset, unsigned grid)
{
    std::mt19937 rng(7 + f + offset); std::uniform_real_distribution<float> u(-3, 3);
    long long ld = 2 * f;
    float* gu = alloc(rows * ld + offset) + offset;    // (rows, 2F), possibly misaligned by `offset` elements
    float* d = alloc(rows * f);
    for (long long i = 0; i < rows * ld; i++) gu[i] = u(rng);
    for (long long i = 0; i < rows * f; i++) d[i] = u(rng);
    float* out = alloc(rows * f);
    float* dgu = alloc(rows * ld);
    const float *g = gu, *up = gu + f; long long gs = ld, us = ld, os = f, ds = f, dgs = ld, dus = ld, R = rows, C = f;
    emu_launch(grid, 64, [&] { swiglu_forward_rows_f32(g, gs, up, us, out, os, R, C); });
    emu_launch(grid, 64, [&] { swiglu_backward_rows_f32(g, gs, up, us, d, ds, dgu, dgs, dgu + f, dus, R, C); });
    std::vector<double> eo(rows * f), edgu(rows * ld);
    for (int r = 0; r < rows; r++) for (int c = 0; c < f; c++)
    {
        double gg = gu[r * ld + c], uu = gu[r * ld + f + c], dd = d[r * f + c], s = sig(gg);
        eo[r * f + c] = gg * s * uu;
        edgu[r * ld + c] = dd * uu * s * (1 + gg * (1 - s));
        edgu[r * ld + f + c] = dd * gg * s;
    }
    char name[96];
    snprintf(name, sizeof name, "swiglu fwd rows=%d F=%d off=%d", rows, f, offset); check(name, eo, out, rows * f, 1e-6);
    snprintf(name, sizeof name, "swiglu bwd rows=%d F=%d off=%d", rows, f, offset); check(name, edgu, dgu, rows * ld, 1e-6);
}

static void rmsnorm(int rows, int c, unsigned grid)
{
    std::mt19937 rng(11 + c); std::uniform_real_distribution<float> u(-2, 2);
    float *x = alloc(rows * c), *w = alloc(c), *out = alloc(rows * c), *rstd = alloc(rows), *dout = alloc(rows * c), *dx = alloc(rows * c);
    for (int i = 0; i < rows * c; i++) { x[i] = u(rng); dout[i] = u(rng); dx[i] = u(rng); }
    for (int i = 0; i < c; i++) w[i] = u(rng);
    std::vector<float> dx0(dx, dx + rows * c);
    int vecs = c / 4; unsigned threads = (vecs + 31) / 32 * 32;
    long long R = rows; int C = c; float eps = 1e-5f;
    int plain = 0;
    emu_launch(grid, threads, [&] { rmsnorm_forward_vec_f32(x, w, out, rstd, R, C, eps, plain, plain); });
    float* scratch = alloc(grid * 2 * c);
    emu_launch(grid, threads, [&] { rmsnorm_backward_vec_f32(dout, x, w, rstd, dx, scratch, R, C); });
    std::vector<double> eo(rows * c), er(rows), edx(rows * c), edw(c, 0.0);
    std::vector<float> dw(c, 0.f);
    for (unsigned b = 0; b < grid; b++) for (int i = 0; i < c; i++) dw[i] += scratch[b * 2 * c + i];
    for (int r = 0; r < rows; r++)
    {
        double ss = 0; for (int i = 0; i < c; i++) ss += (double)x[r * c + i] * x[r * c + i];
        double rs = 1 / std::sqrt(ss / c + 1e-5); er[r] = rs;
        double bs = 0;
        for (int i = 0; i < c; i++) { eo[r * c + i] = x[r * c + i] * rs * w[i]; double xh = x[r * c + i] * rs; bs += dout[r * c + i] * w[i] * xh; edw[i] += dout[r * c + i] * xh; }
        bs /= c;
        for (int i = 0; i < c; i++) edx[r * c + i] = dx0[r * c + i] + rs * (dout[r * c + i] * w[i] - x[r * c + i] * rs * bs);
    }
    char name[96];
    snprintf(name, sizeof name, "rmsnorm fwd rows=%d C=%d grid=%u", rows, c, grid); check(name, eo, out, rows * c, 1e-5);
    snprintf(name, sizeof name, "rmsnorm rstd rows=%d C=%d", rows, c); check(name, er, rstd, rows, 1e-5);
    snprintf(name, sizeof name, "rmsnorm dx rows=%d C=%d", rows, c); check(name, edx, dx, rows * c, 1e-5);
    snprintf(name, sizeof name, "rmsnorm dW rows=%d C=%d", rows, c); check(name, edw, dw.data(), c, 1e-5);
}

// Gemma's post-norm and residual add (AccumulateRmsNorm): out (rows, C) += x r (1 + w), the scale rounded to f32 (exact
// here), through the row-in-registers kernel (vec) or the loop kernel, no rstd stored; against a double reference.
static void rmsnorm_unit_accumulate(int rows, int c, unsigned grid, bool vec)
{
    std::mt19937 rng(13 + c); std::uniform_real_distribution<float> u(-2, 2);
    float *x = alloc(rows * c), *w = alloc(c), *out = alloc(rows * c);
    for (int i = 0; i < rows * c; i++) { x[i] = u(rng); out[i] = u(rng); }
    for (int i = 0; i < c; i++) w[i] = 0.25f * u(rng);
    std::vector<double> e(out, out + rows * c);
    for (int r = 0; r < rows; r++)
    {
        double ss = 0; for (int i = 0; i < c; i++) ss += (double)x[r * c + i] * x[r * c + i];
        const double rs = 1 / std::sqrt(ss / c + 1e-6);
        for (int i = 0; i < c; i++) e[r * c + i] += x[r * c + i] * rs * (1.0 + w[i]);
    }
    long long R = rows; int C = c, one = 1; float eps = 1e-6f; float* none = nullptr;
    if (vec) emu_launch(grid, (unsigned)((c / 4 + 31) / 32 * 32), [&] { rmsnorm_forward_vec_f32(x, w, out, none, R, C, eps, one, one); });
    else emu_launch((unsigned)rows, 64, [&] { rmsnorm_forward_f32(x, w, out, none, C, eps, one, one); });
    char name[96];
    snprintf(name, sizeof name, "rmsnorm unit accumulate rows=%d C=%d %s", rows, c, vec ? "vec" : "loop");
    check(name, e, out, rows * c, 1e-5);
}

// The head norms before RoPE and the append (NormalizeHeadsRopeAndAppend, Qwen3 and Gemma 3) on qkv (B, T, H + 2K, D) with a
// dense cache (B, S, 2K, D): norm_rope_append_rows against a double reference (each q head normalized by qw, each k head by
// kw, with unit the scales 1 + w, then rotated at starts[b] + t, the k and v heads appended), and against the composition it
// replaces, the row-in-registers norm kernel on each head (copied out and back) then rope_append_rows, bit for bit.
static void norm_rope_append(int b, int tn, int h, int k, int d, int unit)
{
    std::mt19937 rng(31 + h + d + unit); std::uniform_real_distribution<float> u(-2, 2);
    const int heads = h + 2 * k, half = d / 2, S = 64;
    const long long sh = d, st = (long long)heads * d, sb = tn * st, n = b * sb, cs = 2LL * k * d, ch = d, cb = S * cs;
    float *x = alloc(n), *cache = alloc(b * cb), *qw = alloc(d), *kw = alloc(d);
    for (long long i = 0; i < n; i++) x[i] = u(rng);
    for (long long i = 0; i < b * cb; i++) cache[i] = 0.5f;
    for (int i = 0; i < d; i++) { qw[i] = 0.3f * u(rng); kw[i] = 0.3f * u(rng); }
    std::vector<int> starts(b);
    for (int i = 0; i < b; i++) starts[i] = 5 + 17 * i;
    std::vector<double> inv(half);
    for (int i = 0; i < half; i++) inv[i] = std::pow(10000.0, -2.0 * i / d);
    RopeFreq f{inv.data(), nullptr, 1.0, 10000.0, 0.0, 0, 0, d, 0};
    const float qe = 1e-6f, ke = 1e-5f;
    std::vector<double> e(x, x + n), ec(cache, cache + b * cb);
    for (int bb = 0; bb < b; bb++) for (int t = 0; t < tn; t++)
    {
        const long long row = bb * sb + t * st;
        const int pos = starts[bb] + t;
        for (int hh = 0; hh < heads; hh++)
        {
            std::vector<double> y(x + row + hh * sh, x + row + hh * sh + d);
            if (hh < h + k)
            {
                const float* w = hh < h ? qw : kw;
                double ss = 0; for (int i = 0; i < d; i++) ss += y[i] * y[i];
                const double rs = 1 / std::sqrt(ss / d + (hh < h ? qe : ke));
                for (int i = 0; i < d; i++) y[i] = y[i] * rs * (unit ? 1.0 + w[i] : w[i]);
                std::vector<double> z(y);
                for (int i = 0; i < half; i++)
                {
                    const double a = (double)pos * inv[i], c = (float)std::cos(a), s = (float)std::sin(a);
                    z[i] = y[i] * c - y[i + half] * s;
                    z[i + half] = y[i + half] * c + y[i] * s;
                }
                y = z;
                for (int i = 0; i < d; i++) e[row + hh * sh + i] = y[i];
            }
            if (hh >= h) for (int i = 0; i < d; i++) ec[bb * cb + pos * cs + (hh - h) * ch + i] = y[i];
        }
    }
    float *x2 = alloc(n), *cache2 = alloc(b * cb);
    std::memcpy(x2, x, n * sizeof(float));
    std::memcpy(cache2, cache, b * cb * sizeof(float));
    int B = b, Tn = tn, H = h, K = k, D = d, qu = unit, ku = unit;
    const int* pst = starts.data(); const int* noslots = nullptr;
    emu_launch((unsigned)(b * tn), 256, [&] { norm_rope_append_rows_f32(x, cache, pst, B, Tn, H, K, D, sb, st, sh, cb, cs, ch, f, noslots,
                                                                          qw, kw, qe, ke, qu, ku); });
    char name[96];
    snprintf(name, sizeof name, "norm_rope_append B=%d T=%d H=%d K=%d D=%d unit=%d qkv", b, tn, h, k, d, unit); check(name, e, x, n, 1e-5);
    snprintf(name, sizeof name, "norm_rope_append B=%d T=%d H=%d K=%d D=%d unit=%d cache", b, tn, h, k, d, unit); check(name, ec, cache, b * cb, 1e-5);
    // The composition: each q and k head's rows through rmsnorm_forward_vec (a block of D / 4 threads rounded to a warp), back, then rope_append_rows.
    const int rows = b * tn;
    for (int part = 0; part < 2; part++)
    {
        const int h0 = part == 0 ? 0 : h, count = part == 0 ? h : k;
        float *hin = alloc((size_t)rows * count * d), *hout = alloc((size_t)rows * count * d), *rstd = alloc(rows * count);
        for (int r = 0; r < rows; r++) for (int j = 0; j < count; j++) std::memcpy(hin + ((size_t)r * count + j) * d, x2 + r * st + (h0 + j) * sh, d * sizeof(float));
        long long R = (long long)rows * count; float eps = part == 0 ? qe : ke; int un = unit, plain = 0;
        const float* w = part == 0 ? qw : kw;
        emu_launch(3, (unsigned)((d / 4 + 31) / 32 * 32), [&] { rmsnorm_forward_vec_f32(hin, w, hout, rstd, R, D, eps, un, plain); });
        for (int r = 0; r < rows; r++) for (int j = 0; j < count; j++) std::memcpy(x2 + r * st + (h0 + j) * sh, hout + ((size_t)r * count + j) * d, d * sizeof(float));
    }
    emu_launch((unsigned)rows, 64, [&] { rope_append_rows_f32(x2, cache2, pst, B, Tn, H, K, D, sb, st, sh, cb, cs, ch, f, noslots); });
    const bool same = std::memcmp(x, x2, n * sizeof(float)) == 0 && std::memcmp(cache, cache2, b * cb * sizeof(float)) == 0;
    snprintf(name, sizeof name, "norm_rope_append D=%d unit=%d = norm + rope_append_rows", d, unit);
    printf("%-40s %s\n", name, same ? "ok" : "FAIL");
    if (!same) failures++;
}

// RoPE rows on the first H + K heads of x (B, T, H + 2K, D) at positions start + t, against a double rotation of the same
// (cos, sin) table; the vector path (aligned x, D/2 % 4 == 0) and the element path (x one element off) must agree bit for bit.
static void rope(int b, int t, int h, int k, int d, int start, int inverse, unsigned grid, unsigned block)
{
    std::mt19937 rng(13 + d + inverse); std::uniform_real_distribution<float> u(-2, 2);
    int half = d / 2, heads = h + 2 * k, rows = b * t;
    long long sh = d, st = (long long)heads * d, sb = t * st, n = b * sb;
    float* x = alloc(n);
    float* y = alloc(n + 1) + 1;      // the same values one element off 16-byte alignment: the element path
    float* cs = alloc(2 * (size_t)(start + t) * half);
    for (long long i = 0; i < n; i++) x[i] = y[i] = u(rng);
    for (long long i = 0; i < 2LL * (start + t) * half; i++) cs[i] = u(rng);
    std::vector<double> e(x, x + n);
    for (int r = 0; r < rows; r++) for (int hh = 0; hh < h + k; hh++) for (int i = 0; i < half; i++)
    {
        int bb = r / t, tt = r % t;
        long long at = bb * sb + tt * st + hh * sh + i;
        double c = cs[2 * ((long long)(start + tt) * half + i)], s = cs[2 * ((long long)(start + tt) * half + i) + 1];
        if (inverse) s = -s;
        double x1 = x[at], x2 = x[at + half];
        e[at] = x1 * c - x2 * s;
        e[at + half] = x2 * c + x1 * s;
    }
    int H = h + k, R = rows, Tn = t, Half = half, S = start, Inv = inverse;
    emu_launch(grid, block, [&] { rope_rows_f32(x, R, Tn, H, Half, sb, st, sh, S, cs, Inv); });
    emu_launch(grid, block, [&] { rope_rows_f32(y, R, Tn, H, Half, sb, st, sh, S, cs, Inv); });
    char name[96];
    snprintf(name, sizeof name, "rope rows B=%d T=%d H=%d K=%d D=%d inv=%d", b, t, h, k, d, inverse); check(name, e, x, n, 1e-6);
    bool same = std::memcmp(x, y, n * sizeof(float)) == 0;
    printf("%-40s %s\n", "rope rows vector = element path", same ? "ok" : "FAIL");
    if (!same) failures++;
}

// rope_append (a decode step's and serving's attention prologue) on x (rows, H + 2K, D): the q and k heads rotated in place at
// position starts[r] (angles from RopeFreq's table, scaled by its attention factor), the rotated k heads and the v heads
// copied to a paged pool at slots[r] (2K heads of D per slot), a negative slot writing nothing. Heads split into groups of
// ROPE_APPEND_HEADS per work item: h + 2k = 12 and 6 check a partial last group and a group of q, k and v heads at once.
// Then rope_append_rows (a CTA per row, `row_block` threads) on copies of the same inputs must give the same bits.
// long_original > 0: LongRoPE, a second table (each short frequency divided by 1 + 0.3 i) that every row takes when the call
// reaches past long_original positions (the rows' largest position + 1), as RopeFrequencies.At does; the short one else.
// rotated < d: partial rotary, the first `rotated` channels of a head turning in pairs (i, i + rotated / 2) by frequencies
// over them, the rest passing through (copied to the pool for the k and v heads).
static void rope_append_paged(int rows, int h, int k, int d, int slots_n, unsigned grid, unsigned block, unsigned row_block,
                              int long_original = 0, int rotated = 0)
{
    const int R = rotated > 0 ? rotated : d;
    std::mt19937 rng(29 + h + d); std::uniform_real_distribution<float> u(-2, 2);
    int half = d / 2, heads = h + 2 * k;
    long long sh = d, sb = (long long)heads * d, n = rows * sb, cs = 2LL * k * d, ch = d;
    float* x = alloc(n);
    float* pool = alloc(slots_n * cs);
    for (long long i = 0; i < n; i++) x[i] = u(rng);
    for (long long i = 0; i < slots_n * cs; i++) pool[i] = 0.5f;   // a slot nobody writes keeps it
    std::vector<int> starts(rows), slots(rows);
    std::vector<double> inv(R / 2);
    for (int i = 0; i < R / 2; i++) inv[i] = std::pow(10000.0, -2.0 * i / R);
    for (int r = 0; r < rows; r++) { starts[r] = (r * 37) % 900; slots[r] = r % 5 == 3 ? -1 : (r * 7) % slots_n; }
    std::vector<double> inv_long(R / 2);
    for (int i = 0; i < R / 2; i++) inv_long[i] = inv[i] / (1 + 0.3 * i);
    RopeFreq f{inv.data(), long_original > 0 ? inv_long.data() : nullptr, 0.875, 10000.0, 0.0, 0, long_original, R, 0};
    const int len = *std::max_element(starts.begin(), starts.end()) + 1;
    const std::vector<double>& used = long_original > 0 && len > long_original ? inv_long : inv;
    std::vector<double> e(x, x + n), ep(pool, pool + slots_n * cs);
    for (int r = 0; r < rows; r++) for (int hh = 0; hh < heads; hh++) for (int i = 0; i < half; i++)
    {
        // Pair i's channels: (i, i + R / 2) turning, or two of the channels past R passing through.
        const int c0 = i < R / 2 ? i : R + (i - R / 2), c1 = i < R / 2 ? i + R / 2 : c0 + (d - R) / 2;
        long long at = r * sb + hh * sh;
        double y1 = x[at + c0], y2 = x[at + c1];
        if (hh < h + k && i < R / 2)
        {
            double a = (double)starts[r] * used[i];
            double c = (float)(std::cos(a) * f.attention), s = (float)(std::sin(a) * f.attention);
            y1 = x[at + c0] * c - x[at + c1] * s;
            y2 = x[at + c1] * c + x[at + c0] * s;
            e[at + c0] = y1; e[at + c1] = y2;
        }
        if (hh >= h && slots[r] >= 0) { long long q = slots[r] * cs + (hh - h) * ch; ep[q + c0] = y1; ep[q + c1] = y2; }
    }
    int B = rows, Tn = 1, H = h, K = k, D = d;
    long long st = 0, cb = 0;
    const int* pst = starts.data(); const int* psl = slots.data();
    float* x2 = alloc(n);
    float* pool2 = alloc(slots_n * cs);
    std::memcpy(x2, x, n * sizeof(float));
    std::memcpy(pool2, pool, slots_n * cs * sizeof(float));
    emu_launch(grid, block, [&] { rope_append_f32(x, pool, pst, B, Tn, H, K, D, sb, st, sh, cb, cs, ch, f, psl); });
    char name[96], tail[40] = "";
    if (long_original > 0) snprintf(tail, sizeof tail, " longrope %d", long_original);
    if (R < d) snprintf(tail + strlen(tail), sizeof tail - strlen(tail), " rotary %d", R);
    snprintf(name, sizeof name, "rope_append rows=%d H=%d K=%d D=%d%s qkv", rows, h, k, d, tail); check(name, e, x, n, 1e-6);
    snprintf(name, sizeof name, "rope_append rows=%d H=%d K=%d D=%d%s pool", rows, h, k, d, tail); check(name, ep, pool, slots_n * cs, 1e-6);
    emu_launch((unsigned)rows, row_block, [&] { rope_append_rows_f32(x2, pool2, pst, B, Tn, H, K, D, sb, st, sh, cb, cs, ch, f, psl); });
    bool same = std::memcmp(x, x2, n * sizeof(float)) == 0 && std::memcmp(pool, pool2, slots_n * cs * sizeof(float)) == 0;
    snprintf(name, sizeof name, "rope_append_rows rows=%d H=%d K=%d D=%d%s = items", rows, h, k, d, tail);
    printf("%-40s %s\n", name, same ? "ok" : "FAIL");
    if (!same) failures++;
}

// The LayerNorm backward with the column sums of dx (issue 18): the warp-per-row kernel (K vectors a lane, 8 warps, each
// warp's dW, dB and dx-sum slices in shared memory) or the block kernel (sums flag set), f32, into partial rows (G, 3C)
// summed here as column_reduce would; against a double reference of dx, dW, dB and the column sums of the dx the kernel
// stored (1e-5: f32 sums of rows terms). mean and rstd come from the host (as floats), so only the backward is checked.
static void layernorm_sums(int rows, int c, int k, unsigned grid, bool warp, bool regs = false)
{
    std::mt19937 rng(23 + c + rows); std::uniform_real_distribution<float> u(-2, 2);
    float *x = alloc(rows * c), *w = alloc(c), *dout = alloc(rows * c), *dx = alloc(rows * c), *mean = alloc(rows), *rstd = alloc(rows);
    for (int i = 0; i < rows * c; i++) { x[i] = u(rng); dout[i] = u(rng); dx[i] = u(rng); }
    for (int i = 0; i < c; i++) w[i] = u(rng);
    for (int r = 0; r < rows; r++)
    {
        double mu = 0, v = 0;
        for (int i = 0; i < c; i++) mu += x[r * c + i];
        mu /= c;
        for (int i = 0; i < c; i++) v += (x[r * c + i] - mu) * (x[r * c + i] - mu);
        mean[r] = (float)mu; rstd[r] = (float)(1 / std::sqrt(v / c + 1e-5));
    }
    std::vector<double> edx(dx, dx + rows * c), edw(c, 0.0), edb(c, 0.0), eds(c, 0.0);
    for (int r = 0; r < rows; r++)
    {
        double a = 0, bs = 0;
        for (int i = 0; i < c; i++) { double xh = (x[r * c + i] - (double)mean[r]) * rstd[r], dn = (double)dout[r * c + i] * w[i]; a += dn; bs += dn * xh; }
        a /= c; bs /= c;
        for (int i = 0; i < c; i++)
        {
            double xh = (x[r * c + i] - (double)mean[r]) * rstd[r];
            edx[r * c + i] += rstd[r] * (dout[r * c + i] * (double)w[i] - a - xh * bs);
            edw[i] += dout[r * c + i] * xh; edb[i] += dout[r * c + i];
        }
    }
    float* scratch = alloc(grid * 3 * c);
    long long R = rows; int C = c;
    if (!warp) emu_launch(grid, 128, [&] { layernorm_backward_f32(dout, x, w, mean, rstd, dx, scratch, R, C, 1); });
    else if (regs && k == 3) emu_launch(grid, 256, [&] { layernorm_backward_warp_sums_regs_f32_k3(dout, x, w, mean, rstd, dx, scratch, R, C); });
    else if (regs) emu_launch(grid, 256, [&] { layernorm_backward_warp_sums_regs_f32_k2(dout, x, w, mean, rstd, dx, scratch, R, C); });
    else if (k == 1) emu_launch(grid, 256, [&] { layernorm_backward_warp_sums_f32_k1(dout, x, w, mean, rstd, dx, scratch, R, C); });
    else if (k == 2) emu_launch(grid, 256, [&] { layernorm_backward_warp_sums_f32_k2(dout, x, w, mean, rstd, dx, scratch, R, C); });
    else if (k == 3) emu_launch(grid, 256, [&] { layernorm_backward_warp_sums_f32_k3(dout, x, w, mean, rstd, dx, scratch, R, C); });
    else emu_launch(grid, 256, [&] { layernorm_backward_warp_sums_f32_k4(dout, x, w, mean, rstd, dx, scratch, R, C); });
    std::vector<float> dw(c, 0.f), db(c, 0.f), ds(c, 0.f);
    for (unsigned b = 0; b < grid; b++)
        for (int i = 0; i < c; i++) { dw[i] += scratch[b * 3 * c + i]; db[i] += scratch[b * 3 * c + c + i]; ds[i] += scratch[b * 3 * c + 2 * c + i]; }
    for (int r = 0; r < rows; r++) for (int i = 0; i < c; i++) eds[i] += dx[r * c + i];   // the sums of what was stored
    std::vector<double> edsRef(c, 0.0);
    for (int r = 0; r < rows; r++) for (int i = 0; i < c; i++) edsRef[i] += edx[r * c + i];
    char name[96];
    const char* kind = !warp ? "block" : regs ? "warp regs" : "warp";
    snprintf(name, sizeof name, "layernorm sums %s k%d rows=%d C=%d dx", kind, k, rows, c); check(name, edx, dx, rows * c, 1e-5);
    snprintf(name, sizeof name, "layernorm sums %s k%d rows=%d C=%d dW", kind, k, rows, c); check(name, edw, dw.data(), c, 1e-5);
    snprintf(name, sizeof name, "layernorm sums %s k%d rows=%d C=%d dB", kind, k, rows, c); check(name, edb, db.data(), c, 1e-5);
    snprintf(name, sizeof name, "layernorm sums %s k%d rows=%d C=%d sums", kind, k, rows, c); check(name, eds, ds.data(), c, 1e-5);
    snprintf(name, sizeof name, "layernorm sums %s k%d rows=%d C=%d = ref", kind, k, rows, c); check(name, edsRef, ds.data(), c, 1e-5);
}

// column_reduce (the norms' weight gradients): target (C) += the column sums of (rows, 2C) partials, and target2 += those of
// columns C..2C, with `warps` warps per block each walking rows w, w + warps, ...
static void column_reduce(int rows, int c, unsigned warps)
{
    std::mt19937 rng(17 + rows); std::uniform_real_distribution<float> u(-1, 1);
    long long stride = 2LL * c;
    float *partial = alloc(rows * stride), *t1 = alloc(c), *t2 = alloc(c);
    for (long long i = 0; i < rows * stride; i++) partial[i] = u(rng);
    for (int i = 0; i < c; i++) { t1[i] = u(rng); t2[i] = u(rng); }
    std::vector<double> e1(t1, t1 + c), e2(t2, t2 + c);
    for (int r = 0; r < rows; r++) for (int i = 0; i < c; i++) { e1[i] += partial[r * stride + i]; e2[i] += partial[r * stride + c + i]; }
    int R = rows, C = c;
    emu_launch((2 * c + 31) / 32, 32 * warps, [&] { column_reduce_f32(partial, R, stride, C, t1, t2); });
    char name[96];
    snprintf(name, sizeof name, "column_reduce rows=%d C=%d warps=%u", rows, c, warps);
    std::vector<double> both(e1); both.insert(both.end(), e2.begin(), e2.end());
    std::vector<float> got(t1, t1 + c); got.insert(got.end(), t2, t2 + c);
    check(name, both, got.data(), 2 * c, 1e-5);
}

// The fused cross-entropy on rows of V f32 logits (16-byte vectors, a scalar tail when V % 4 != 0), the gradient written
// over the logits, with `staged` of the row's vectors kept in shared memory between the passes: against a double
// reference (1e-5: ex2 on the host is exp2f, the statistics f32 sums of V terms), and the same bits as staged = 0.
static void cross_entropy(int rows, int v, int staged, unsigned block)
{
    std::mt19937 rng(19 + v); std::uniform_real_distribution<float> u(-4, 4);
    std::vector<float> init(rows * (size_t)v);
    for (auto& e : init) e = u(rng);
    std::vector<int> targets(rows);
    for (int r = 0; r < rows; r++) targets[r] = (int)(rng() % v);
    targets[1] = -1;
    auto run = [&](int st, std::vector<float>& grad, std::vector<float>& loss)
    {
        float* x = alloc(rows * (size_t)v);
        std::copy(init.begin(), init.end(), x);
        float* l = alloc(rows);
        long long xs = v; int V = v, aligned = v % 4 == 0 ? 1 : 0, S = st; float scale = 0.5f;
        emu_launch(rows, block, [&] { cross_entropy_f32(x, xs, targets.data(), l, x, xs, V, scale, aligned, S); });
        grad.assign(x, x + rows * (size_t)v); loss.assign(l, l + rows);
    };
    std::vector<float> g0, l0, g1, l1;
    run(0, g0, l0);
    run(staged, g1, l1);
    std::vector<double> eg(rows * (size_t)v, 0.0), el(rows, 0.0);
    for (int r = 0; r < rows; r++)
    {
        if (targets[r] < 0) continue;
        double m = -INFINITY, sum = 0;
        for (int i = 0; i < v; i++) m = std::max(m, (double)init[r * v + i]);
        for (int i = 0; i < v; i++) sum += std::exp(init[r * v + i] - m);
        el[r] = std::log(sum) + m - init[r * v + targets[r]];
        for (int i = 0; i < v; i++) eg[r * v + i] = (std::exp(init[r * v + i] - m) / sum - (i == targets[r])) * 0.5;
    }
    char name[96];
    snprintf(name, sizeof name, "cross_entropy V=%d staged=%d loss", v, staged); check(name, el, l1.data(), rows, 1e-5);
    snprintf(name, sizeof name, "cross_entropy V=%d staged=%d grad", v, staged); check(name, eg, g1.data(), g1.size(), 1e-5);
    bool same = g0 == g1 && l0 == l1;
    snprintf(name, sizeof name, "cross_entropy V=%d staged=%d = unstaged", v, staged);
    printf("%-40s %s\n", name, same ? "ok" : "FAIL");
    if (!same) failures++;
}

// The cross-entropy with each row split over a cluster of `ctas` CTAs (cross_entropy_cluster_f32_v4 or _v8: `vectors` a thread), `clusters` clusters
// walking the 5 rows (the next row's vectors loaded ahead), the gradient written over the logits, rows `xs` apart: against
// the double reference (1e-5, as above) and within 1e-6 of the one-CTA kernel (only the order of the f32 sums differs).
// Row 1 is ignored (loss 0, gradient 0), row 2's target is V - 1 (the scalar tail when V % 4 != 0), row 3's is V (loss NaN).
// The padding between rows must stay untouched.
static void cross_entropy_cluster(int v, int xs, unsigned ctas, unsigned block, unsigned clusters, int vectors)
{
    const int rows = 5;
    std::mt19937 rng(23 + v + (int)ctas); std::uniform_real_distribution<float> u(-4, 4);
    std::vector<float> init(rows * (size_t)xs, 7.f);   // padding columns hold 7
    for (int r = 0; r < rows; r++) for (int i = 0; i < v; i++) init[r * (size_t)xs + i] = u(rng);
    std::vector<int> targets(rows);
    for (int r = 0; r < rows; r++) targets[r] = (int)(rng() % v);
    targets[1] = -1; targets[2] = v - 1; targets[3] = v;
    auto run = [&](bool cluster, std::vector<float>& grad, std::vector<float>& loss)
    {
        float* x = alloc(rows * (size_t)xs);
        std::copy(init.begin(), init.end(), x);
        float* l = alloc(rows);
        long long s = xs; int V = v, aligned = xs % 4 == 0 ? 1 : 0, S = 0; float scale = 0.5f;
        if (!cluster) emu_launch(rows, 64, [&] { cross_entropy_f32(x, s, targets.data(), l, x, s, V, scale, aligned, S); });
        long long R = rows;
        if (cluster && vectors == 4) emu_launch_cluster(clusters * ctas, ctas, block, [&] { cross_entropy_cluster_f32_v4(x, s, targets.data(), l, x, s, R, V, scale); });
        if (cluster && vectors == 8) emu_launch_cluster(clusters * ctas, ctas, block, [&] { cross_entropy_cluster_f32_v8(x, s, targets.data(), l, x, s, R, V, scale); });
        grad.assign(x, x + rows * (size_t)xs); loss.assign(l, l + rows);
    };
    std::vector<float> g0, l0, g1, l1;
    run(false, g0, l0);
    run(true, g1, l1);
    std::vector<double> eg(init.begin(), init.end()), el(rows, 0.0);
    for (int r = 0; r < rows; r++)
    {
        const float* row = init.data() + r * (size_t)xs;
        if (targets[r] < 0) { for (int i = 0; i < v; i++) eg[r * (size_t)xs + i] = 0; continue; }
        double m = -INFINITY, sum = 0;
        for (int i = 0; i < v; i++) m = std::max(m, (double)row[i]);
        for (int i = 0; i < v; i++) sum += std::exp(row[i] - m);
        el[r] = std::log(sum) + m - (targets[r] < v ? row[targets[r]] : 0);
        for (int i = 0; i < v; i++) eg[r * (size_t)xs + i] = (std::exp(row[i] - m) / sum - (i == targets[r])) * 0.5;
    }
    char name[112];
    bool nan = std::isnan(l1[3]);
    l1[3] = 0; el[3] = 0;
    snprintf(name, sizeof name, "cross_entropy_cluster V=%d xs=%d ctas=%u clusters=%u v%d loss", v, xs, ctas, clusters, vectors); check(name, el, l1.data(), rows, 1e-5);
    printf("%-40s %s\n", "  target = V gives a NaN loss", nan ? "ok" : "FAIL");
    if (!nan) failures++;
    snprintf(name, sizeof name, "cross_entropy_cluster V=%d xs=%d ctas=%u clusters=%u v%d grad", v, xs, ctas, clusters, vectors); check(name, eg, g1.data(), g1.size(), 1e-5);
    std::vector<double> one(g0.begin(), g0.end());
    snprintf(name, sizeof name, "cross_entropy_cluster V=%d ctas=%u = one CTA", v, ctas); check(name, one, g1.data(), g1.size(), 1e-6);
}

// Tolerances: f32 arithmetic (expf, rsqrtf as 1/sqrt on the host, f32 sums) against double references is ~1e-7 relative;
// 1e-6 (SwiGLU, RoPE: two rounded products and a sum per value) and 1e-5 (RMSNorm's sums over rows of up to 4096) leave margin, and a wrong index, stride or term is O(1).
int main()
{
    swiglu(37, 264, 0, 3);    // vectors of 4
    swiglu(37, 261, 0, 3);    // F not a multiple of 4: one element per thread
    swiglu(37, 264, 1, 3);    // misaligned base: one element per thread
    swiglu(5, 8, 0, 1);
    rmsnorm(37, 1000, 5);     // 250 vectors, 256 threads: 6 idle
    rmsnorm(9, 4096, 2);      // 1024 threads
    rmsnorm(3, 64, 7);        // more blocks than rows
    rmsnorm_unit_accumulate(5, 1152, 3, true);    // Gemma 3 1B's rows: 288 vectors, 288 threads
    rmsnorm_unit_accumulate(5, 1001, 3, false);   // the loop kernel (C not a multiple of 4)
    norm_rope_append(2, 3, 4, 2, 16, 1);          // Gemma 3's unit-offset head norms: 8 heads, 4 vectors a head
    norm_rope_append(1, 2, 8, 4, 64, 0);          // Qwen3's plain ones: 16 heads over 8 warps, two a warp
    norm_rope_append(2, 1, 1, 1, 256, 1);         // D = 256 in f32: 64 vectors, two a lane
    rope(2, 5, 4, 2, 16, 3, 0, 3, 64);     // 4 pairs per vector item, 24 items per row
    rope(3, 7, 2, 1, 8, 0, 1, 5, 32);      // one item per head; the inverse rotation
    rope(1, 3, 2, 1, 12, 1, 0, 2, 32);     // D/2 = 6: element path both times
    rope_append_paged(11, 8, 2, 16, 40, 3, 64, 4);   // 12 heads: groups of 8 and 4; padding rows (slot -1); 3 blocks stride the items;
                                                      // rows of 96 pairs in 4 threads: 3 batches of 8 loads, the 8 angles 2 a thread
    rope_append_paged(6, 2, 2, 8, 9, 1, 32, 32);     // 6 heads in one group: q, k and v heads in one item; slots shared by rows; 24 pairs, 32 threads
    rope_append_paged(11, 8, 2, 16, 40, 3, 64, 4, 200);   // LongRoPE: the call reaches 371 positions, past 200: every row on the long table
    rope_append_paged(6, 2, 2, 8, 9, 1, 32, 32, 186);     // LongRoPE: the call reaches exactly 186 positions: the short table
    rope_append_paged(11, 8, 2, 16, 40, 3, 64, 4, 0, 12);   // partial rotary: 12 of 16 channels turn, 2 pairs a head pass through
    rope_append_paged(6, 2, 2, 8, 9, 1, 32, 32, 100, 6);    // partial rotary (6 of 8) with LongRoPE past 100 positions
    layernorm_sums(37, 384, 3, 3, true);   // 3 vectors a lane (GPT-2's k at C = 768 in bf16), 8 warps x 3 blocks: rows of 0 to 2 a warp
    layernorm_sums(50, 300, 3, 2, true);   // a partly filled last vector (300 = 2.34 x 128)
    layernorm_sums(9, 512, 4, 1, true);    // 4 vectors a lane; one block, warps without rows
    layernorm_sums(37, 771, 0, 5, false);  // the block kernel: odd C, 128 threads walking 7 rows each
    layernorm_sums(37, 384, 3, 3, true, true);   // the sums in registers (LayerNormSumsInRegisters), written once a lane
    layernorm_sums(50, 200, 2, 2, true, true);   // a partly filled last vector, lanes past C holding nothing
    column_reduce(1056, 40, 32);           // the llama-1b partials' row count, 33 rows per warp
    column_reduce(37, 20, 2);              // rows not a multiple of the warps; a partial block of columns
    cross_entropy(3, 1000, 250, 64);       // the whole row staged (250 vectors, 64 threads: pairs, then a single vector)
    cross_entropy(3, 1000, 37, 64);        // part of it: the rest read twice
    cross_entropy(3, 1003, 100, 32);       // unaligned: staging does not apply, the scalar path (same bits)
    cross_entropy_cluster(1000, 1000, 4, 32, 5, 4);   // 250 vectors: 63 a CTA (the last 61), two a thread; a cluster a row
    cross_entropy_cluster(1003, 1008, 4, 64, 2, 4);   // a 3-element tail on the last CTA; rows 1008 apart, padding kept; 3 and 2 rows a cluster
    cross_entropy_cluster(40, 40, 8, 32, 1, 4);       // 10 vectors over 8 CTAs: the last three CTAs hold none; one cluster walks all rows
    cross_entropy_cluster(2003, 2008, 2, 32, 2, 8);   // 8 vectors a thread: 251 a CTA in 32 threads (the last vector of a thread partly used)
    printf("%s\n", failures ? "FAILURES" : "all ok");
    return failures;
}
