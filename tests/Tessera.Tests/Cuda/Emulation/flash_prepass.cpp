// The first pass of the FlashAttention backward (flash_attention.cu's flash_backward_pre, and its form with sums) in bf16 on
// the CPU emulation of CUDA: delta (B, H, T) =
// rowsum(dO o O) and the zeroed fp32 dQ accumulator, and its form with the column sums of dO (flash_backward_pre_sums: the
// bias gradient of the product that made v, since a query's probabilities sum to 1), against a double reference over the
// bf16 inputs, on strided (B, T, H, D) views of fused tensors as the model passes them: head sizes 64 and 128, a grid whose
// threads are a multiple of a row of every head's (the host's rule), more rows than one pass of the grid. kernels.h is
// written by the test: the emulation, common.cuh, flash_attention.cu. Prints one line per check; the exit code is the
// number of failures.
#include "kernels.h"
#include "attention_reference.h"   // check
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

unsigned char smem[1 << 16];        // the file's other kernels' dynamic shared memory (unused here)
float pre_sums[1 << 14];            // flash_backward_pre_sums's (H D floats)

// O and dO as (B, T, H, D) views into rows of W heads (the fused layout's stride), first head at `offset`.
static void run(int B, int T, int H, int D, int blocks)
{
    std::mt19937 rng(3 + B * 7 + T + H * 5 + D);
    std::uniform_real_distribution<float> u(-1, 1);
    const int W = H + 3;   // row stride in heads: the views skip some
    std::vector<bf16> o((size_t)B * T * W * D), dout((size_t)B * T * W * D);
    for (auto& e : o) e = from_f<bf16>(u(rng));
    for (auto& e : dout) e = from_f<bf16>(u(rng));
    const Strides3 st{(i64)T * W * D, (i64)W * D, D};
    const bf16 *po = o.data() + 2 * D, *pd = dout.data() + D;   // O from head 2 of each row, dO from head 1
    std::vector<double> edelta((size_t)B * H * T, 0.0), esum((size_t)H * D, 0.0);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++)
                for (int d = 0; d < D; d++)
                {
                    const size_t at = (size_t)b * st.b + (size_t)t * st.t + (size_t)h * st.h + d;
                    edelta[((size_t)b * H + h) * T + t] += (double)to_f(po[at]) * to_f(pd[at]);
                    esum[(size_t)h * D + d] += to_f(pd[at]);
                }
    const size_t rows = (size_t)B * T * H;
    std::vector<float> delta(rows, 7.f), dqacc(rows * D, 7.f), partial((size_t)blocks * H * D, 7.f);
    float *pdelta = delta.data(), *pacc = dqacc.data(), *ppart = partial.data();
    int b_ = B, t_ = T, h_ = H;
    emu_launch(dim3{(unsigned)blocks, 1, 1}, 256, [&] {
        if (D == 64) flash_backward_pre_sums_bf16_d64(po, pd, pdelta, pacc, b_, t_, h_, st, st, ppart);
        else flash_backward_pre_sums_bf16_d128(po, pd, pdelta, pacc, b_, t_, h_, st, st, ppart);
    });
    std::vector<float> gsum((size_t)H * D, 0.f);
    for (int r = 0; r < blocks; r++)
        for (int c = 0; c < H * D; c++) gsum[c] += partial[(size_t)r * H * D + c];
    bool zero = true;
    for (float v : dqacc) zero &= v == 0.f;
    char name[120];
    // Tolerance: fp32 sums of exact products of bf16 values over at most 128 columns (delta) or a few hundred rows (the
    // column sums): 1e-5 of the largest; a wrong row, head or column is O(1).
    snprintf(name, sizeof name, "pre sums B=%d T=%d H=%d D=%d blocks=%d delta", B, T, H, D, blocks);
    check(name, edelta, delta, 1e-5);
    snprintf(name, sizeof name, "pre sums B=%d T=%d H=%d D=%d blocks=%d dO column sums", B, T, H, D, blocks);
    check(name, esum, gsum, 1e-5);
    snprintf(name, sizeof name, "pre sums B=%d T=%d H=%d D=%d blocks=%d dQ accumulator zeroed", B, T, H, D, blocks);
    printf("%-64s %s\n", name, zero ? "ok" : "FAIL");
    if (!zero) failures++;
    // The plain first pass (the FlashAttention-2 and Hopper backwards without the sums), a thread per 8 columns of a row.
    std::vector<float> delta2(rows, 7.f), dqacc2(rows * D, 7.f);
    float *pdelta2 = delta2.data(), *pacc2 = dqacc2.data();
    emu_launch(dim3{(unsigned)((rows * (D / 8) + 255) / 256), 1, 1}, 256, [&] {
        if (D == 64) flash_backward_pre_bf16_d64(po, pd, pdelta2, pacc2, b_, t_, h_, st, st);
        else flash_backward_pre_bf16_d128(po, pd, pdelta2, pacc2, b_, t_, h_, st, st);
    });
    bool zero2 = true;
    for (float v : dqacc2) zero2 &= v == 0.f;
    snprintf(name, sizeof name, "pre B=%d T=%d H=%d D=%d delta", B, T, H, D);
    check(name, edelta, delta2, 1e-5);
    snprintf(name, sizeof name, "pre B=%d T=%d H=%d D=%d dQ accumulator zeroed", B, T, H, D);
    printf("%-64s %s\n", name, zero2 ? "ok" : "FAIL");
    if (!zero2) failures++;
}

int main()
{
    run(2, 37, 12, 64, 3);    // GPT-2's 12 heads: 96 threads a row of every head, 3 blocks of 256 a multiple; 888 rows over passes
    run(1, 50, 3, 128, 3);    // D 128: 48 threads a row of every head; rows not a whole number of passes
    run(3, 20, 8, 64, 1);     // 8 heads: one block of 256 is 4 rows of every head
    printf("%s\n", failures ? "FAILURES" : "all ok");
    return failures;
}
