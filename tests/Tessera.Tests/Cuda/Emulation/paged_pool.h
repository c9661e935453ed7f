// Shared by the paged-prefill checks (flash_forward.cpp's FA-2 tile, hopper_attention.cpp's Hopper tile): a KV pool of
// 16-row blocks, each sequence's blocks in a shuffled block table, rows of 2 K heads of D values (K's heads, then V's), and
// optionally its int8 or fp8 form. Include after kernels.h (bf16, the emulation's quantizers).
#pragma once
#include <algorithm>
#include <vector>

struct EmuPagedPool
{
    int block_size = 16, max_blocks = 0;
    long long stride = 0;             // values a slot: 2 K D
    std::vector<int> tables;          // (B, max_blocks)
    std::vector<bf16> pool;           // (slots, 2 K, D); over a quantized pool, each row's dequantized values (what the tiles hold)
    std::vector<unsigned char> codes; // the quantized pool's int8 values or E4M3 codes, or empty
    std::vector<float> scales;        // a scale per (slot, head) row, or empty

    // The pool slot of sequence b's position pos.
    size_t slot(int b, int pos) const { return (size_t)tables[(size_t)b * max_blocks + pos / block_size] * block_size + pos % block_size; }
};

// A pool for sequences of lengths[b] positions with K kv heads of D: max_blocks = the longest sequence's blocks, three spare
// blocks, the blocks handed out in an order shuffled by rng; every value value() rounded to bf16; with code int8 or fp8
// each row quantized with its scale (emu_quantize_kv_row) and the bf16 values replaced by scale x code.
template <typename Rng, typename Value>
static EmuPagedPool make_paged_pool(const std::vector<int>& lengths, int K, int D, EmuKv code, Rng& rng, Value value)
{
    EmuPagedPool p;
    const int B = (int)lengths.size();
    for (int b = 0; b < B; b++) p.max_blocks = std::max(p.max_blocks, (lengths[b] + p.block_size - 1) / p.block_size);
    const int pool_blocks = B * p.max_blocks + 3;
    std::vector<int> order(pool_blocks);
    for (int i = 0; i < pool_blocks; i++) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    p.tables.assign(order.begin(), order.begin() + (size_t)B * p.max_blocks);
    p.stride = 2LL * K * D;
    p.pool.resize((size_t)pool_blocks * p.block_size * p.stride);
    for (auto& e : p.pool) e = from_f<bf16>(value());
    if (code == EmuKv::None) return p;
    p.codes.resize(p.pool.size());
    p.scales.resize(p.pool.size() / D);
    std::vector<float> row(D);
    for (size_t r = 0; r < p.scales.size(); r++)
    {
        for (int d = 0; d < D; d++) row[d] = to_f(p.pool[r * D + d]);
        p.scales[r] = emu_quantize_kv_row(code, row.data(), &p.codes[r * D], D);
        for (int d = 0; d < D; d++) p.pool[r * D + d] = from_f<bf16>(p.scales[r] * emu_kv_value(code, p.codes[r * D + d]));
    }
    return p;
}
