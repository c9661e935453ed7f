// The simple attention kernels (attention.cu) in their f32 instantiation on the CPU emulation of CUDA (cuda_emulation.h),
// against a double reference: the forward (output and log-sum-exp), the forward over a cache (each sequence's queries at its
// device-side start), and the backward (delta, dq, dk and dv) of causal grouped-query attention. These kernels take every
// head size up to 256 and every soft-capped call (they are the backward of capped and 256-wide attention), so the cases are head
// sizes 256 (Gemma 2 2B/9B, Gemma 3) and 40 (not a multiple of 32), with and without Gemma 2's soft cap, with a sliding
// window. Inputs are uniform in (-2, 2), so at D = 256 and scale 1/16 the scores reach about +-4 and a cap of 1 bends most
// of them (a kernel that skipped the cap, or its slope in the backward, misses by O(1)). Prints one line per check; the
// exit code is the number of failures. kernels.h is written by the test: the emulation, common.cuh, attention.cu.
#include "kernels.h"
#include "attention_reference.h"
#include <random>
#include <string>

float smem[1 << 15];   // the kernels' dynamic shared memory (extern __shared__): 74 KB at D = 256, the dk/dv kernel's most

// Tolerances: f32 dot products of up to 256 terms, expf, tanhf and the online rescaling against double give ~1e-6 of the
// largest value; the backward sums those over up to 50 queries or keys and a group of 2 heads: 1e-5 and 5e-5 leave margin,
// and a wrong key, head, mask or a missing cap term is O(1e-1) or more.

// B sequences of T queries at positions start_b .. start_b + T - 1 over S_b = start_b + T keys (start_b = S - T without a
// cache), H query heads over K kv heads, (B, T, H, D) and (B, S, K, D) contiguous.
static void run(int B, int T, int S, int H, int K, int D, int window, float cap, bool cached, bool backward)
{
    std::mt19937 rng(7 + B * 3 + T + D * 5 + window + (int)(cap * 10) + cached);
    std::uniform_real_distribution<float> u(-2, 2);
    std::vector<float> q((size_t)B * T * H * D), k((size_t)B * S * K * D), v(k.size()), dout(q.size());
    for (auto& x : q) x = u(rng);
    for (auto& x : k) x = u(rng);
    for (auto& x : v) x = u(rng);
    for (auto& x : dout) x = u(rng);
    std::vector<int> starts(B);
    for (int b = 0; b < B; b++) starts[b] = cached ? (S - T) * (b + 1) / B - b : S - T;   // different lengths a sequence
    const float scale = 1.f / std::sqrt((float)D);
    const int kernel_window = window > 0 ? window : 1 << 30;

    // Reference, double: o, lse; and the backward (without a cache: S = T) from each query's capped scores y and probabilities p.
    std::vector<double> eo, elog, edq(q.size(), 0.0), edk(k.size(), 0.0), edv(k.size(), 0.0);
    reference_attention(B, T, H, K, D, starts, window, scale, cap, tensor_at(q, T, H, D), tensor_at(k, S, K, D), tensor_at(v, S, K, D), eo, elog,
        [&](int b, int h, int t, int lo, int pos, const std::vector<double>& y, const std::vector<double>& p) {
            if (!backward) return;
            const int g = h / (H / K);
            const float* qr = &q[(((size_t)b * T + t) * H + h) * D];
            const float* dr = &dout[(((size_t)b * T + t) * H + h) * D];
            const double* o = &eo[(((size_t)b * T + t) * H + h) * D];
            double delta = 0;
            for (int d = 0; d < D; d++) delta += (double)dr[d] * o[d];
            for (int j = lo; j <= pos; j++)
            {
                const float* kr = &k[(((size_t)b * S + j) * K + g) * D];
                const float* vr = &v[(((size_t)b * S + j) * K + g) * D];
                double dp = 0;
                for (int d = 0; d < D; d++) dp += (double)dr[d] * vr[d];
                const double slope = cap > 0 ? 1 - (y[j] / cap) * (y[j] / cap) : 1;
                const double ds = p[j] * (dp - delta) * slope * scale;   // dL / d(q.k)
                for (int d = 0; d < D; d++)
                {
                    edq[(((size_t)b * T + t) * H + h) * D + d] += ds * kr[d];
                    edk[(((size_t)b * S + j) * K + g) * D + d] += ds * qr[d];
                    edv[(((size_t)b * S + j) * K + g) * D + d] += p[j] * dr[d];
                }
            }
        });

    std::vector<float> o(q.size(), NAN), lse((size_t)B * H * T, NAN);
    Strides3 qs{(i64)T * H * D, (i64)H * D, D}, ks{(i64)S * K * D, (i64)K * D, D};
    std::vector<int> cache_lengths(starts);   // the kernel's starts argument: the cached positions before the call's queries
    const int* pst = cached ? cache_lengths.data() : nullptr;
    emu_launch(dim3{(unsigned)((T + 3) / 4), (unsigned)H, (unsigned)B}, 128, [&] {
        attention_forward_f32(q.data(), k.data(), v.data(), o.data(), lse.data(), T, S, H, K, D, qs, ks, ks, qs, scale, pst,
                              kernel_window, cap);
    });
    char name[160];
    snprintf(name, sizeof name, "attention B=%d T=%d S=%d H=%d K=%d D=%d window=%d cap=%g%s", B, T, S, H, K, D, window, cap,
             cached ? " cached" : "");
    std::string base = name;
    check((base + " output").c_str(), eo, o, 1e-5);
    check((base + " lse").c_str(), elog, lse, 1e-5);
    if (!backward) return;
    std::vector<float> delta((size_t)B * H * T), dq(q.size(), NAN), dk(k.size(), NAN), dv(k.size(), NAN);
    emu_launch((unsigned)((B * T * H + 3) / 4), 128, [&] { attention_backward_delta_f32(o.data(), dout.data(), delta.data(), B, T, H, D, qs, qs); });
    emu_launch(dim3{(unsigned)((T + 3) / 4), (unsigned)H, (unsigned)B}, 128, [&] {
        attention_backward_dq_f32(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dq.data(), T, H, K, D,
                                  qs, ks, ks, qs, qs, scale, kernel_window, cap);
    });
    emu_launch(dim3{(unsigned)((T + 3) / 4), (unsigned)K, (unsigned)B}, 128, [&] {
        attention_backward_dkdv_f32(q.data(), k.data(), v.data(), dout.data(), lse.data(), delta.data(), dk.data(), dv.data(),
                                    T, H, K, D, qs, ks, ks, qs, ks, ks, scale, kernel_window, cap);
    });
    check((base + " dq").c_str(), edq, dq, 5e-5);
    check((base + " dk").c_str(), edk, dk, 5e-5);
    check((base + " dv").c_str(), edv, dv, 5e-5);
}

int main()
{
    run(2, 37, 37, 4, 2, 256, 0, 0.f, false, true);    // head size 256, no cap
    run(2, 37, 37, 4, 2, 256, 0, 1.f, false, true);    // Gemma 2's cap
    run(1, 50, 50, 2, 1, 40, 8, 1.f, false, true);     // D = 40 (a partial last lane slice), a window of 8, capped
    run(2, 3, 48, 4, 2, 256, 0, 1.f, true, false);     // three queries over a cache (device-side starts), capped
    run(2, 1, 48, 4, 2, 256, 16, 1.f, true, false);    // one decode query a sequence, a window of 16
    printf("%s\n", failures ? "FAILURES" : "all ok");
    return failures;
}
