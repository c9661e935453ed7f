// The indexing of the Hopper paged prefill (paged_prefill_hopper, flash_attention_hopper.cu) that lives in common.cuh, on the
// CPU emulation of CUDA (cuda_emulation.h); the kernel whole (its wgmma tile included) is checked by hopper_attention.cpp.
//  1. The K/V row sources into the 128-byte-swizzled layout: PagedRowsSw128 (rows through a block table of blocks of 16,
//     scattered in a shuffled pool of interleaved K and V heads) and DenseRowsSw128 (load_tile_sw128, training's loader)
//     must each write, for every tile of 128 rows a prefill reads (row0 0, 128, 256 of 300 positions: the last tile partly
//     past the length), exactly the independent formula's bytes: row r's 16-byte chunk c (values 8c .. 8c + 7) at
//     (c / 8) * 128 * 128 + r * 128 + ((c % 8) ^ (r % 8)) * 16, rows at or past the length zero, for head sizes 64 and 128
//     and CTAs of 128 and 256 threads (one and two warpgroups). Shared memory starts poisoned (0xAB), so a chunk left
//     unwritten fails. Bytes are compared exactly: the loaders copy, they compute nothing.
//  2. find_prefill_tile (the tile-finding prologue paged_prefill and paged_prefill_hopper share): for tiles of 64 and 128
//     rows, a batch of 40 sequences (more than warp 0's 32 at a time) mixing decode rows, rows just under and at min_rows,
//     chunks not multiples of 64 and a 512-row chunk, over the host's upper bound of CTAs: CTA x must find the x-th tile of
//     the sequences with at least min_rows rows in order, and every CTA past the last one sequence -1.
// Prints one line per check; the exit code is the number of failures. kernels.h is written by the test: the emulation
// and common.cuh.
#include "kernels.h"
#include <algorithm>
#include <random>

alignas(1024) static unsigned char tile_shared[128 * 128 * 2 + 1024];
static int failures = 0;

static void report(const char* what, bool ok, const char* detail = "")
{
    printf("%-64s %s%s\n", what, detail, ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

template <int D, int NT> static void check_row_sources()
{
    constexpr int ROWS = 128, BS = 16, S = 300, K = 2;
    std::mt19937 rng(1000 + D + NT);
    const int blocks = (S + BS - 1) / BS, pool_blocks = blocks + 5;
    std::vector<int> table(blocks);
    std::vector<int> order(pool_blocks);
    for (int i = 0; i < pool_blocks; i++) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    for (int i = 0; i < blocks; i++) table[i] = order[i];
    // pool (blocks, 16, 2K, D) of 16-bit values; the dense copy (S, D) of kv head 1's values (head K + 1 of the pool).
    const long long stride = 2LL * K * D;
    std::vector<unsigned short> pool((size_t)pool_blocks * BS * stride), dense((size_t)S * D);
    std::uniform_int_distribution<int> bits(1, 0xFFFE);
    for (auto& x : pool) x = (unsigned short)bits(rng);
    const int head = K + 1;
    for (int p = 0; p < S; p++)
        for (int d = 0; d < D; d++)
            dense[(size_t)p * D + d] = pool[((size_t)table[p / BS] * BS + p % BS) * stride + head * D + d];
    const bf16* pool16 = (const bf16*)pool.data();
    const PagedRowsSw128<bf16> paged{pool16 + (long long)head * D, table.data(), BS, stride};
    const DenseRowsSw128<bf16> dense_rows{(const bf16*)dense.data(), D};
    emu_shared_base = tile_shared;
    for (int source = 0; source < 2; source++)
        for (int row0 = 0; row0 < S; row0 += ROWS)
        {
            std::memset(tile_shared, 0xAB, sizeof(tile_shared));
            if (source == 0) emu_launch(1, NT, [&] { paged.template load<D, ROWS, NT>(0u, row0, S, threadIdx.x); });
            else emu_launch(1, NT, [&] { dense_rows.template load<D, ROWS, NT>(0u, row0, S, threadIdx.x); });
            int bad = 0;
            for (int r = 0; r < ROWS; r++)
                for (int c = 0; c < D / 8; c++)
                {
                    const unsigned off = (unsigned)((c / 8) * ROWS * 128 + r * 128 + (((c % 8) ^ (r % 8)) * 16));
                    unsigned short want[8] = {};
                    if (row0 + r < S) std::memcpy(want, &dense[(size_t)(row0 + r) * D + 8 * c], 16);
                    if (std::memcmp(tile_shared + off, want, 16) != 0) bad++;
                }
            char what[128], detail[64];
            snprintf(what, sizeof what, "%s D=%d NT=%d row0=%d S=%d", source == 0 ? "PagedRowsSw128" : "DenseRowsSw128", D, NT, row0, S);
            snprintf(detail, sizeof detail, "%d wrong chunks ", bad);
            report(what, bad == 0, detail);
        }
}

template <int BM> static void check_tile_finding()
{
    // 40 sequences: decode rows (1), rows just under and at min_rows (7, 8), chunks not multiples of 64, 512 rows.
    const int min_rows = 8;
    std::vector<int> rows = {1, 37, 1, 7, 8, 512, 1, 65, 64, 63, 1, 1, 200, 9, 1, 130, 1, 1, 1, 300,
                             1, 1, 129, 1, 7, 1, 1, 1, 1, 1, 1, 1, 1, 1, 96, 1, 1, 8, 1, 500};
    const int B = (int)rows.size();
    std::vector<int> starts(B + 1, 0);
    for (int b = 0; b < B; b++) starts[b + 1] = starts[b] + rows[b];
    const int N = starts[B];
    // The host's grid (CudaBackend.PagedAttention): ceil(N / BM) plus one partial tile per sequence that may qualify.
    const int grid = (N + BM - 1) / BM + std::min(B, N / min_rows);
    std::vector<std::pair<int, int>> expected;
    for (int b = 0; b < B; b++)
        if (rows[b] >= min_rows)
            for (int t = 0; t < (rows[b] + BM - 1) / BM; t++) expected.push_back({b, t});
    std::vector<std::pair<int, int>> found(grid, {-2, -2});
    emu_launch(grid, 128, [&] {
        const PrefillTile tile = find_prefill_tile<BM>(starts.data(), B, min_rows);
        if (threadIdx.x == 0) found[blockIdx.x] = {tile.sequence, tile.sequence < 0 ? -1 : tile.index};
    });
    int bad = 0;
    for (int x = 0; x < grid; x++)
    {
        const std::pair<int, int> want = x < (int)expected.size() ? expected[x] : std::pair<int, int>{-1, -1};
        if (found[x] != want) bad++;
    }
    char what[128], detail[64];
    snprintf(what, sizeof what, "find_prefill_tile BM=%d B=%d N=%d tiles=%d grid=%d", BM, B, N, (int)expected.size(), grid);
    snprintf(detail, sizeof detail, "%d wrong CTAs ", bad);
    report(what, bad == 0 && grid >= (int)expected.size(), detail);
}

int main()
{
    check_row_sources<64, 128>();
    check_row_sources<64, 256>();
    check_row_sources<128, 128>();
    check_row_sources<128, 256>();
    check_tile_finding<64>();
    check_tile_finding<128>();
    if (failures == 0) printf("all ok\n");
    return failures;
}
