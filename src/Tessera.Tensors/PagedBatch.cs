namespace Tessera.Tensors;

/// <summary>
/// The device-side description of one step of a batch of sequences over a paged KV cache (vLLM's attention metadata),
/// passed to <see cref="IBackend.PagedAppend"/> and <see cref="IBackend.PagedAttention"/>. The step's N new tokens are
/// flattened: sequence b owns rows QueryStarts[b] .. QueryStarts[b+1] - 1 (a prefill chunk or one decode token), and
/// after the step its cache holds ContextLengths[b] positions, so its q-th new row sits at position
/// ContextLengths[b] - (QueryStarts[b+1] - QueryStarts[b]) + q. Positions live in blocks of <see cref="BlockSize"/>:
/// position p of sequence b is slot BlockTables[b, p / BlockSize] * BlockSize + p % BlockSize of the pool.
/// Every tensor is contiguous I32 on the backend that runs the op, so a recorded step reads them from device memory.
/// </summary>
/// <param name="BlockTables">(B, MaxBlocks) I32: physical block of each logical block of each sequence; unused entries are ignored.</param>
/// <param name="QueryStarts">(B + 1) I32, non-decreasing, QueryStarts[0] = 0 and QueryStarts[B] = N: each sequence's first row.</param>
/// <param name="ContextLengths">(B) I32: positions cached for each sequence once the step's tokens are appended (0 for a padding sequence).</param>
/// <param name="Slots">(N) I32: the pool slot each new row's key and value go to; negative for padding rows, which write nothing.</param>
/// <param name="BlockSize">Positions per block; positive.</param>
public readonly record struct PagedBatch(Tensor BlockTables, Tensor QueryStarts, Tensor ContextLengths, Tensor Slots, int BlockSize)
{
    /// <summary>Sequences B in the step.</summary>
    public int Sequences => ContextLengths.Size(0);

    /// <summary>New rows N in the step.</summary>
    public int Rows => Slots.Size(0);

    /// <summary>Throws <see cref="ArgumentException"/> naming the field whose shape or dtype is wrong.</summary>
    public void Validate(string op)
    {
        if (BlockSize <= 0) throw new ArgumentException($"{op}: PagedBatch.BlockSize ({BlockSize}) must be positive");
        Check(op, nameof(BlockTables), BlockTables, 2);
        Check(op, nameof(QueryStarts), QueryStarts, 1);
        Check(op, nameof(ContextLengths), ContextLengths, 1);
        Check(op, nameof(Slots), Slots, 1);
        int b = ContextLengths.Size(0);
        if (BlockTables.Size(0) != b)
            throw new ArgumentException($"{op}: PagedBatch.BlockTables {BlockTables.Shape} must have one row per sequence ({b})");
        if (QueryStarts.Size(0) != b + 1)
            throw new ArgumentException($"{op}: PagedBatch.QueryStarts {QueryStarts.Shape} must hold B + 1 = {b + 1} entries");
    }

    private static void Check(string op, string field, Tensor t, int rank)
    {
        ArgumentNullException.ThrowIfNull(t, field);
        if (t.DType != DType.I32 || t.Rank != rank || !t.IsContiguous)
            throw new ArgumentException($"{op}: PagedBatch.{field} must be a contiguous rank-{rank} I32 tensor, got {t.Shape} {t.DType}");
    }
}
