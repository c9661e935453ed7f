namespace Tessera.Training.Data;

/// <summary>
/// Reads (B, T) inputs and their next-token targets from llm.c token shards, in order, the way
/// llm.c's distributed loader does: a global batch covers world * B * T consecutive tokens and
/// rank r takes the r-th slice, so each rank reads its own part. The position is exact state:
/// saving it and restoring it resumes the stream bit for bit. Shards of both widths (uint16, uint32) may be mixed; each
/// loaded shard stays in its own width in memory.
/// </summary>
public sealed class TokenDataLoader : ITokenBatchSource
{
    private readonly string[] _shards;
    private ushort[]? _narrow;
    private int[]? _wide;
    private int _loadedShard = -1;

    /// <summary>Opens <paramref name="shards"/> (validating every header) for batches of <paramref name="batchSize"/> x <paramref name="sequenceLength"/>.</summary>
    public TokenDataLoader(IReadOnlyList<string> shards, int batchSize, int sequenceLength, int rank = 0, int worldSize = 1)
    {
        if (shards.Count == 0) throw new ArgumentException("no token shards given");
        if (batchSize <= 0) throw new ArgumentOutOfRangeException(nameof(batchSize), $"batch size {batchSize} must be positive");
        if (sequenceLength <= 0) throw new ArgumentOutOfRangeException(nameof(sequenceLength), $"sequence length {sequenceLength} must be positive");
        if (worldSize <= 0 || rank < 0 || rank >= worldSize) throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} outside world of {worldSize}");
        _shards = shards.ToArray();
        BatchSize = batchSize;
        SequenceLength = sequenceLength;
        Rank = rank;
        WorldSize = worldSize;
        long need = (long)worldSize * batchSize * sequenceLength + 1;
        foreach (var s in _shards)
        {
            long n = TokenShard.ReadTokenCount(s);
            if (n < need)
                throw new InvalidDataException($"{s}: {n} tokens, fewer than one global batch needs ({worldSize} ranks x {batchSize} x {sequenceLength} + 1 = {need}); use a smaller batch or a larger shard");
            TotalTokens += n;
        }
    }

    /// <summary>Rows per batch (B).</summary>
    public int BatchSize { get; }

    /// <summary>Tokens per row (T).</summary>
    public int SequenceLength { get; }

    /// <summary>This rank's index.</summary>
    public int Rank { get; }

    /// <summary>Number of ranks sharing the stream.</summary>
    public int WorldSize { get; }

    /// <summary>Tokens in all shards.</summary>
    public long TotalTokens { get; }

    /// <summary>False: every target of pretraining data counts.</summary>
    public bool IgnoresTargets => false;

    /// <summary>Next read position; settable to resume.</summary>
    public DataPosition Position { get; set; }

    /// <summary>Fills inputs and targets (B*T each, row-major) with the next batch and advances.</summary>
    public void NextBatch(Span<int> inputs, Span<int> targets)
    {
        int bt = BatchSize * SequenceLength;
        if (inputs.Length != bt || targets.Length != bt)
            throw new ArgumentException($"batch buffers must hold B*T = {bt} tokens");
        long global = (long)bt * WorldSize;
        var pos = Position;
        long length = Load(pos.Shard);
        if (pos.Offset + global + 1 > length)
        {
            pos = NextShard(pos);
            length = Load(pos.Shard);
        }
        long start = pos.Offset + (long)bt * Rank;
        if (_narrow is { } narrow)
        {
            for (int i = 0; i < bt; i++)
            {
                inputs[i] = narrow[start + i];
                targets[i] = narrow[start + i + 1];
            }
        }
        else
        {
            var wide = _wide!;
            for (int i = 0; i < bt; i++)
            {
                inputs[i] = wide[start + i];
                targets[i] = wide[start + i + 1];
            }
        }
        pos = pos with { Offset = pos.Offset + global };
        if (pos.Offset + global + 1 > length) pos = NextShard(pos);
        Position = pos;
    }

    private DataPosition NextShard(DataPosition pos) =>
        pos.Shard + 1 < _shards.Length ? new DataPosition(pos.Shard + 1, 0, pos.Epoch) : new DataPosition(0, 0, pos.Epoch + 1);

    /// <summary>Loads a shard (once) and returns its token count.</summary>
    private long Load(int shard)
    {
        if (shard < 0 || shard >= _shards.Length)
            throw new ArgumentOutOfRangeException(nameof(shard), $"data position names shard {shard} but only {_shards.Length} are open");
        if (_loadedShard != shard)
        {
            _narrow = null;
            _wide = null;
            if (TokenShard.ReadHeader(_shards[shard]).Format == TokenShardFormat.Uint16) _narrow = TokenShard.ReadTokens(_shards[shard]);
            else _wide = TokenShard.ReadTokenIds(_shards[shard]);
            _loadedShard = shard;
        }
        return _narrow?.Length ?? _wide!.Length;
    }
}
