using Tessera.Inference.Paging;
using Tessera.Tensors;

namespace Tessera.Tests.Cuda;

/// <summary>
/// A paged batch laid out on the host for the GPU kernel tests, uploaded to any backend with <see cref="On"/>: each sequence
/// b has <c>Rows[b]</c> new rows ending at its context length <c>Lengths[b]</c> (a length of 0 with one row is a padding row,
/// slot -1), its blocks scattered over the pool in a shuffled order. With a window, the blocks wholly left of the window of
/// a sequence's first row all point at the pool's last block, which a test fills with NaN so that a kernel that reads one
/// poisons its row.
/// </summary>
internal sealed record PagedBatchLayout(int[] Tables, int[] Starts, int[] Lengths, int[] Slots, int MaxBlocks, int PoolBlocks, int BlockSize)
{
    /// <summary>The block every table entry left of the window points at (the pool's last); meaningful only with a window.</summary>
    public int OutsideWindowBlock => PoolBlocks - 1;

    /// <param name="rng">Shuffles the blocks (the caller logs its seed).</param>
    /// <param name="spareBlocks">Free blocks beyond those the sequences hold.</param>
    /// <param name="window">Sliding window in positions; null: none (and no block kept for <see cref="OutsideWindowBlock"/>).</param>
    public static PagedBatchLayout Scattered(Random rng, int blockSize, int[] rows, int[] lengths, int spareBlocks, int? window = null)
    {
        int seqs = rows.Length, maxBlocks = lengths.Max() / blockSize + 1;
        int freeBlocks = lengths.Sum(l => (l + blockSize - 1) / blockSize) + spareBlocks;
        int poolBlocks = freeBlocks + (window is null ? 0 : 1);
        var free = Enumerable.Range(0, freeBlocks).OrderBy(_ => rng.Next()).ToList();
        var tables = new int[seqs * maxBlocks];
        var starts = new int[seqs + 1];
        var slots = new List<int>();
        for (int b = 0; b < seqs; b++)
        {
            int first = window is int w ? Math.Max(0, lengths[b] - rows[b] - w + 1) : 0;
            for (int i = 0; i < (lengths[b] + blockSize - 1) / blockSize; i++)
            {
                if ((i + 1) * blockSize <= first) tables[b * maxBlocks + i] = poolBlocks - 1;
                else { tables[b * maxBlocks + i] = free[0]; free.RemoveAt(0); }
            }
            starts[b + 1] = starts[b] + rows[b];
            for (int j = 0; j < rows[b]; j++)
            {
                int p = lengths[b] - rows[b] + j;
                slots.Add(p < 0 ? -1 : tables[b * maxBlocks + p / blockSize] * blockSize + p % blockSize);
            }
        }
        return new PagedBatchLayout(tables, starts, lengths, slots.ToArray(), maxBlocks, poolBlocks, blockSize);
    }

    /// <summary>The batch's tables, row starts, context lengths and slots as int tensors on <paramref name="backend"/>.</summary>
    public PagedBatch On(IBackend backend) =>
        new(backend.FromArray(Tables, Starts.Length - 1, MaxBlocks), backend.FromArray(Starts, Starts.Length),
            backend.FromArray(Lengths, Lengths.Length), backend.FromArray(Slots, Slots.Length), BlockSize);
}
