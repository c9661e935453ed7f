// Shared by the attention kernels' emulation checks (attention_kernels.cpp, flash_decode.cpp, flash_forward.cpp): the
// relative-error check and a double reference of causal grouped-query attention with a sliding window and Gemma 2's soft cap.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>
#include "emulation_check.h"

// Passes when the largest |actual - expected| is within tol of the largest |expected| (a non-finite value fails); prints one
// line "what rel err X ok|FAIL".
static void check(const char* what, const std::vector<double>& e, const std::vector<float>& a, double tol)
{
    report_error(what, 72, errors_of(e.data(), a.data(), e.size()).relative(), tol);
}

// The scaled score s capped as Gemma 2 does: cap tanh(s / cap), s itself without a cap (cap 0).
static double capped_score(double s, double cap) { return cap > 0 ? cap * std::tanh(s / cap) : s; }

// Element (b, r, h, d) of a contiguous (B, rows, heads, D) tensor of floats or 16-bit values as a double: the accessor that
// reference_attention takes (kernels.h, included first, gives to_f).
template <typename T> static auto tensor_at(const std::vector<T>& x, int rows, int heads, int D)
{
    return [&x, rows, heads, D](int b, int r, int h, int d) { return (double)to_f(x[(((size_t)b * rows + r) * heads + h) * D + d]); };
}

// B sequences of T queries, H query heads over K kv heads of D channels; sequence b's query t sits at position
// starts[b] + t and sees keys lo .. that position (lo: 0, or the window's oldest). q(b, t, h, d), k(b, j, g, d) and
// v(b, j, g, d) give the inputs as doubles. Fills out (B, T, H, D) and lse (B, H, T, natural log), and calls
// row(b, h, t, lo, pos, y, p) for each query with its capped scaled scores y and probabilities p (indexed by key position).
template <typename Q, typename Kf, typename Vf, typename Row>
static void reference_attention(int B, int T, int H, int K, int D, const std::vector<int>& starts, int window, double scale, double cap,
                                Q q, Kf k, Vf v, std::vector<double>& out, std::vector<double>& lse, Row row)
{
    out.assign((size_t)B * T * H * D, 0.0);
    lse.assign((size_t)B * H * T, 0.0);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++)
            {
                const int g = h / (H / K), pos = starts[b] + t, lo = window > 0 ? std::max(0, pos - window + 1) : 0;
                std::vector<double> y(pos + 1, 0.0), p(pos + 1, 0.0);
                double big = -INFINITY, sum = 0;
                for (int j = lo; j <= pos; j++)
                {
                    double dot = 0;
                    for (int d = 0; d < D; d++) dot += q(b, t, h, d) * k(b, j, g, d);
                    y[j] = capped_score(dot * scale, cap);
                    big = std::max(big, y[j]);
                }
                for (int j = lo; j <= pos; j++) { p[j] = std::exp(y[j] - big); sum += p[j]; }
                double* o = &out[(((size_t)b * T + t) * H + h) * D];
                for (int j = lo; j <= pos; j++)
                {
                    p[j] /= sum;
                    for (int d = 0; d < D; d++) o[d] += p[j] * v(b, j, g, d);
                }
                lse[((size_t)b * H + h) * T + t] = big + std::log(sum);
                row(b, h, t, lo, pos, y, p);
            }
}

// The forward alone: out and lse of bf16 or float tensors (B, T, H, D), (B, S, K, D) as reference_attention computes them.
template <typename E>
static void reference_attention(int B, int T, int S, int H, int K, int D, const std::vector<int>& starts, int window, double scale, double cap,
                                const std::vector<E>& q, const std::vector<E>& k, const std::vector<E>& v, std::vector<double>& out,
                                std::vector<double>& lse)
{
    reference_attention(B, T, H, K, D, starts, window, scale, cap, tensor_at(q, T, H, D), tensor_at(k, S, K, D), tensor_at(v, S, K, D), out,
                        lse, [](int, int, int, int, int, const std::vector<double>&, const std::vector<double>&) {});
}
