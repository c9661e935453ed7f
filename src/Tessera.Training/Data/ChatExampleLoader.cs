namespace Tessera.Training.Data;

/// <summary>
/// Batches of chat examples for supervised fine-tuning, one conversation per row (padded, not packed, so no example attends to
/// another): row tokens t_0 .. t_{L-1} give inputs t_0 .. t_{T-1} and targets t_1 .. t_T where the target is an assistant token,
/// -1 (ignored by the loss) elsewhere; a row shorter than T + 1 tokens is padded with input <see cref="PadToken"/> and
/// target -1, a longer one cut at T + 1 tokens. Examples are read in order and repeat by epoch; a global batch is world x B
/// rows and rank r takes rows [r B, (r + 1) B). The position (shard 0, offset = index of the next example, epoch) is exact state.
/// </summary>
public sealed class ChatExampleLoader : ITokenBatchSource
{
    private readonly IReadOnlyList<ChatExample> _examples;

    /// <summary>Batches of <paramref name="batchSize"/> x <paramref name="sequenceLength"/> from <paramref name="examples"/>.</summary>
    public ChatExampleLoader(IReadOnlyList<ChatExample> examples, int batchSize, int sequenceLength, int rank = 0, int worldSize = 1, int padToken = 0)
    {
        ArgumentNullException.ThrowIfNull(examples);
        if (examples.Count == 0) throw new ArgumentException("no chat examples given");
        if (batchSize <= 0) throw new ArgumentOutOfRangeException(nameof(batchSize), $"batch size {batchSize} must be positive");
        if (sequenceLength <= 0) throw new ArgumentOutOfRangeException(nameof(sequenceLength), $"sequence length {sequenceLength} must be positive");
        if (worldSize <= 0 || rank < 0 || rank >= worldSize) throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} outside world of {worldSize}");
        _examples = examples;
        BatchSize = batchSize;
        SequenceLength = sequenceLength;
        Rank = rank;
        WorldSize = worldSize;
        PadToken = padToken;
    }

    /// <inheritdoc/>
    public int BatchSize { get; }

    /// <inheritdoc/>
    public int SequenceLength { get; }

    /// <inheritdoc/>
    public int Rank { get; }

    /// <inheritdoc/>
    public int WorldSize { get; }

    /// <summary>The input id of padding positions (their targets are -1, so it only has to be a valid id).</summary>
    public int PadToken { get; }

    /// <summary>Number of examples.</summary>
    public int Count => _examples.Count;

    /// <summary>Assistant tokens that fall inside the first T + 1 tokens of their rows (what the loss sees per epoch).</summary>
    public long TrainedTokens => _examples.Sum(e => (long)e.Trained.Take(SequenceLength + 1).Skip(1).Count(t => t));

    /// <summary>Examples with no assistant token within the first T + 1 tokens (they contribute nothing).</summary>
    public int ExamplesWithoutTargets => _examples.Count(e => !e.Trained.Take(SequenceLength + 1).Skip(1).Any(t => t));

    /// <inheritdoc/>
    public bool IgnoresTargets => true;   // padding and every non-assistant token

    /// <inheritdoc/>
    public DataPosition Position { get; set; }

    /// <inheritdoc/>
    public void NextBatch(Span<int> inputs, Span<int> targets)
    {
        int t = SequenceLength;
        if (inputs.Length != BatchSize * t || targets.Length != BatchSize * t)
            throw new ArgumentException($"chat batches: buffers of {inputs.Length} and {targets.Length} for {BatchSize} x {t}");
        long start = Position.Offset + (long)Rank * BatchSize;
        for (int row = 0; row < BatchSize; row++)
        {
            var e = _examples[(int)((start + row) % _examples.Count)];
            var rowIn = inputs.Slice(row * t, t);
            var rowTarget = targets.Slice(row * t, t);
            rowIn.Fill(PadToken);
            rowTarget.Fill(-1);
            int n = Math.Min(e.Tokens.Length - 1, t);
            for (int j = 0; j < n; j++)
            {
                rowIn[j] = e.Tokens[j];
                if (e.Trained[j + 1]) rowTarget[j] = e.Tokens[j + 1];
            }
        }
        long next = Position.Offset + (long)WorldSize * BatchSize;
        Position = new DataPosition(0, next % _examples.Count, Position.Epoch + (int)(next / _examples.Count));
    }
}
