using Tessera.Inference.Scheduling;
using Tessera.Models;
using Tessera.Nn;
using Tessera.Nn.Layers;
using Tessera.Tensors;

namespace Tessera.Inference.Paging;

/// <summary>
/// Runs a <see cref="ScheduledStep"/> through a <see cref="Transformer"/> over a <see cref="PagedKvCache"/>: the step's
/// tokens of every sequence (prefill chunks and decode tokens) are one flattened batch of N rows, so every product runs
/// at M = N (the CUDA backend's matrix-vector kernels for a few rows, cuBLASLt above); attention reads each sequence's
/// keys through its block table (<see cref="IBackend.PagedAttention"/>); only the last row of each sequence that samples
/// goes through the final norm and the head. The model code is the dense path's layers called in a paged arrangement
/// (the same products, norms and MLPs), so the two agree to rounding.
/// <para>
/// The step's metadata (tokens, positions, slots, block tables) is written into one host array and copied to one device
/// buffer at fixed offsets, so the device addresses never change. A decode-only step is padded to a batch-size bucket
/// (1, 2, 4, 8, ...): on a backend that records (<see cref="IGraphCapture"/>) the first step of a bucket runs normally,
/// the second is recorded and later ones replay the recording after copying the metadata (one graph per bucket).
/// </para>
/// </summary>
public sealed class PagedModelRunner : IDisposable
{
    private readonly Transformer _model;
    private readonly PagedKvCache _cache;
    private readonly IBackend _backend;
    private readonly int _maxRows, _maxSequences, _maxBlocks, _vocab;
    private readonly int _offPositions, _offSlots, _offStarts, _offLengths, _offLast, _offTables;
    private readonly int[] _host;
    private readonly Tensor _metadata;           // (total) I32: the sections above, at fixed offsets
    private readonly Tensor _sampled;            // (maxSequences) I32: argmax of each sampling row
    private readonly Tensor _logitsF32;          // (maxSequences, V) F32: logits cast for the host
    private readonly int[] _greedy;
    private float[] _logits = [];
    private readonly bool _record;
    private readonly Dictionary<int, Bucket> _buckets = new();
    private readonly ActivationKey _attentionOut = new("paged.att.out"), _lastHidden = new("paged.last.hidden");

    private sealed class Bucket
    {
        public int EagerRuns;
        public bool Unrecordable;
        public ICapturedGraph? Graph;
        public Tensor? Logits;
    }

    /// <summary>A runner for steps of at most <paramref name="maxRows"/> tokens and <paramref name="maxSequences"/> sequences of up to <paramref name="maxSequenceLength"/> positions.</summary>
    public PagedModelRunner(Transformer model, PagedKvCache cache, int maxRows, int maxSequences, int maxSequenceLength, bool recordGraphs)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(cache);
        if (maxRows <= 0 || maxSequences <= 0 || maxSequences > maxRows)
            throw new ArgumentException($"PagedModelRunner: maxSequences ({maxSequences}) must lie in [1, maxRows = {maxRows}]");
        if (maxSequenceLength <= 0 || maxSequenceLength > model.Config.MaxSequenceLength)
            throw new ArgumentException($"PagedModelRunner: maxSequenceLength ({maxSequenceLength}) must lie in [1, the model's context {model.Config.MaxSequenceLength}]");
        if (cache.Layers != model.Config.Layers || cache.KvHeads != model.Config.EffectiveKvHeads || cache.HeadSize != model.Config.HeadSize)
            throw new ArgumentException($"PagedModelRunner: the cache ({cache.Layers} layers, {cache.KvHeads} kv heads of {cache.HeadSize}) does not fit the model ({model.Config.Layers}, {model.Config.EffectiveKvHeads}, {model.Config.HeadSize})");
        if (model.TensorParallelism is { Size: > 1 })
            throw new NotSupportedException($"PagedModelRunner: serving runs the model on one device; this one is split over {model.TensorParallelism.Size} tensor-parallel ranks");
        _model = model;
        _cache = cache;
        _backend = model.Backend;
        _maxRows = maxRows;
        _maxSequences = maxSequences;
        // A table row holds a sequence's logical blocks; without a window they are all held, so the pool bounds them too.
        // With one, the blocks left of the window are -1 entries and a sequence may reach more logical blocks than the pool has.
        int logical = (maxSequenceLength + cache.BlockSize - 1) / cache.BlockSize;
        _maxBlocks = model.Config.SlidingWindow > 0 ? logical : Math.Min(logical, cache.Blocks);
        _vocab = model.Config.VocabSize;
        _offPositions = maxRows;
        _offSlots = 2 * maxRows;
        _offStarts = 3 * maxRows;
        _offLengths = _offStarts + maxSequences + 1;
        _offLast = _offLengths + maxSequences;
        _offTables = _offLast + maxSequences;
        _host = new int[_offTables + maxSequences * _maxBlocks];
        _metadata = _backend.Allocate(new Shape(_host.Length), DType.I32);
        _sampled = _backend.Allocate(new Shape(maxSequences), DType.I32);
        _logitsF32 = _backend.Allocate(new Shape(maxSequences, _vocab), DType.F32);
        _greedy = new int[maxSequences];
        _record = recordGraphs && _backend is IGraphCapture;
        WarmUp();
    }

    /// <summary>Graphs recorded so far (one per decode batch-size bucket used twice).</summary>
    public int RecordedGraphs => _buckets.Values.Count(b => b.Graph is not null);

    /// <summary>Steps that replayed a recorded graph.</summary>
    public long ReplayedSteps { get; private set; }

    /// <summary>Whether <see cref="Run"/> waits for the device after the metadata copy and after the forward pass, so that
    /// <see cref="LastPhaseTicks"/> separates the device phases (otherwise the forward's device time falls in the readback).</summary>
    public bool SeparatePhases { get; set; }

    /// <summary>
    /// Stopwatch ticks of the last <see cref="Run"/>: writing and copying the metadata, the forward pass (enqueue or replay,
    /// and with <see cref="SeparatePhases"/> its device time), and reading the sampled ids and logits back.
    /// </summary>
    public (long Metadata, long Forward, long Readback) LastPhaseTicks { get; private set; }

    /// <summary>
    /// Runs <paramref name="step"/>. Returns, for each sequence that samples (in step order), the argmax of its logits in
    /// <paramref name="greedy"/>; when <paramref name="withLogits"/>, also its logits row (V floats each) in
    /// <paramref name="logits"/>. Both arrays are the runner's and are overwritten by the next call.
    /// </summary>
    public int Run(ScheduledStep step, bool withLogits, out ReadOnlySpan<int> greedy, out ReadOnlySpan<float> logits)
    {
        ArgumentNullException.ThrowIfNull(step);
        if (step.IsEmpty) throw new ArgumentException("PagedModelRunner.Run: the step is empty");
        int sequences = step.Sequences.Count, rows = step.Tokens, bucket = sequences;
        if (rows > _maxRows || sequences > _maxSequences)
            throw new ArgumentException($"PagedModelRunner.Run: the step has {rows} tokens of {sequences} sequences; the runner takes at most {_maxRows} and {_maxSequences}");
        bool decode = step.IsDecodeOnly;
        if (decode) bucket = BucketOf(sequences);
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        int sampling = FillMetadata(step, decode ? bucket : sequences, decode ? bucket : rows);
        int outputs = decode ? bucket : Math.Max(sampling, 1);        // a bucket computes logits for its padding rows too
        _backend.CopyFromHost<int>(_host, _metadata);
        if (SeparatePhases) _backend.Synchronize();
        long t1 = System.Diagnostics.Stopwatch.GetTimestamp();

        Tensor stepLogits;
        if (decode && _record)
        {
            var b = _buckets.TryGetValue(bucket, out var found) ? found : _buckets[bucket] = new Bucket();
            if (b.Graph is null && !b.Unrecordable && b.EagerRuns > 0 && _backend is IGraphCapture capture)
            {
                b.Graph = capture.Capture(() => b.Logits = Body(bucket, bucket, bucket));
                b.Unrecordable = b.Graph is null;                    // e.g. the backend's profiler is on: run eagerly from now on
            }
            if (b.Graph is not null)
            {
                b.Graph.Replay();
                ReplayedSteps++;
                stepLogits = b.Logits!;
            }
            else
            {
                stepLogits = Body(bucket, bucket, bucket);
                b.EagerRuns++;
            }
        }
        else stepLogits = Body(decode ? bucket : sequences, decode ? bucket : rows, outputs);
        if (SeparatePhases) _backend.Synchronize();
        long t2 = System.Diagnostics.Stopwatch.GetTimestamp();

        _backend.CopyToHost<int>(_sampled.Slice(0, 0, sampling), _greedy.AsSpan(0, sampling));
        greedy = _greedy.AsSpan(0, sampling);
        logits = default;
        if (withLogits)
        {
            var f32 = _logitsF32.Slice(0, 0, sampling);
            _backend.Copy(stepLogits.Slice(0, 0, sampling), f32);
            if (_logits.Length < sampling * _vocab) _logits = new float[_maxSequences * _vocab];
            _backend.CopyToHost<float>(f32, _logits.AsSpan(0, sampling * _vocab));
            logits = _logits.AsSpan(0, sampling * _vocab);
        }
        LastPhaseTicks = (t1 - t0, t2 - t1, System.Diagnostics.Stopwatch.GetTimestamp() - t2);
        return sampling;
    }

    /// <summary>Writes the host metadata; pads to <paramref name="sequences"/> sequences of <paramref name="rows"/> rows. Returns the sampling rows.</summary>
    private int FillMetadata(ScheduledStep step, int sequences, int rows)
    {
        int bs = _cache.BlockSize, row = 0, sampling = 0, b = 0;
        Array.Clear(_host, _offTables, sequences * _maxBlocks);
        foreach (var (sequence, start, count) in step.Sequences)
        {
            _host[_offStarts + b] = row;
            var table = sequence.BlockTable;
            if (table.Count > _maxBlocks)
                throw new InvalidOperationException($"PagedModelRunner: sequence {sequence.Id} holds {table.Count} blocks, more than the {_maxBlocks} a table row has");
            for (int i = 0; i < table.Count; i++) _host[_offTables + b * _maxBlocks + i] = table[i];
            for (int j = 0; j < count; j++, row++)
            {
                int position = start + j;
                _host[row] = sequence.Tokens[position];
                _host[_offPositions + row] = position;
                _host[_offSlots + row] = table[position / bs] * bs + position % bs;
            }
            _host[_offLengths + b] = start + count;
            if (start + count == sequence.Tokens.Count) _host[_offLast + sampling++] = row - 1;
            b++;
        }
        // Padding: one row per extra sequence, no context, no slot; its logits are computed and ignored.
        for (; b < sequences; b++, row++)
        {
            _host[_offStarts + b] = row;
            _host[row] = 0;
            _host[_offPositions + row] = 0;
            _host[_offSlots + row] = -1;
            _host[_offLengths + b] = 0;
            _host[_offLast + b] = row;
        }
        for (; row < rows; row++) { _host[row] = 0; _host[_offPositions + row] = 0; _host[_offSlots + row] = -1; }
        _host[_offStarts + sequences] = rows;
        for (int i = sampling; i < sequences && i < _maxSequences; i++) _host[_offLast + i] = Math.Max(rows - 1, 0);
        return sampling;
    }

    /// <summary>The forward pass over the metadata's first <paramref name="sequences"/> and <paramref name="rows"/>; logits (outputs, V).</summary>
    private Tensor Body(int sequences, int rows, int outputs)
    {
        var config = _model.Config;
        using var scope = (_backend as IInferenceScope)?.EnterInference();   // nothing here writes a weight
        var batch = new PagedBatch(
            _metadata.Narrow(_offTables, new Shape(sequences, _maxBlocks)),
            _metadata.Narrow(_offStarts, new Shape(sequences + 1)),
            _metadata.Narrow(_offLengths, new Shape(sequences)),
            _metadata.Narrow(_offSlots, new Shape(rows)),
            _cache.BlockSize);
        var tokens = _metadata.Narrow(0, new Shape(rows));
        var positions = _metadata.Narrow(_offPositions, new Shape(rows));
        var ctx = PassContext.Transient(_model.Activations);
        var x = _model.TokenEmbedding.Forward(ctx, tokens);                     // (N, C): the residual stream, updated in place
        _model.PositionEmbedding?.Forward(ctx, positions, x, accumulate: true);
        foreach (var block in _model.Blocks)
        {
            Attention(ctx, block, x, positions, batch);
            block.Mlp.ForwardAccumulate(ctx, x, block.Norm2, x);
        }
        var last = ctx.Buffer(_lastHidden, new Shape(outputs, config.Embedding), x.DType);   // (M, C)
        _backend.EmbeddingForward(_metadata.Narrow(_offLast, new Shape(outputs)), x, last);  // gather the sampling rows
        var logits = _model.Head.ForwardNormalized(ctx, last, _model.FinalNorm).Slice(1, 0, config.VocabSize);   // (M, V)
        _backend.ArgMax(logits, _sampled.Slice(0, 0, outputs));
        return logits;
    }

    private void Attention(in PassContext ctx, Models.Blocks.TransformerBlock block, Tensor x, Tensor positions, PagedBatch batch)
    {
        var attention = block.Attention;
        int n = x.Size(0), h = attention.Heads, k = attention.KvHeads, d = attention.HeadSize;
        var qkv = attention.Qkv.ForwardNormalized(ctx, x, block.Norm1).Reshape(n, h + 2 * k, d);   // (N, H+2K, D)
        if (attention.Rope is { } rope)
            _backend.Rope(qkv.Reshape(n, 1, h + 2 * k, d).Slice(2, 0, h + k), positions, rope);   // q and k heads at each row's position
        var pool = _cache.Pool(block.Index);
        _backend.PagedAppend(qkv.Slice(1, h, 2 * k), pool, batch);
        var output = ctx.Buffer(_attentionOut, new Shape(n, h, d), x.DType);                        // (N, H, D)
        _backend.PagedAttention(qkv.Slice(1, 0, h), pool, batch, output, 1.0 / Math.Sqrt(d), attention.SlidingWindow);
        attention.Projection.ForwardAccumulate(ctx, output.Reshape(n, h * d), x);
    }

    private int BucketOf(int sequences)
    {
        int bucket = 1;
        while (bucket < sequences) bucket <<= 1;
        return Math.Min(bucket, _maxSequences);
    }

    /// <summary>
    /// One forward at the largest shapes (every row padding: nothing written, no context), so the pooled activation buffers
    /// reach their final size before any step is recorded: a recording must never see a buffer reallocated under it.
    /// </summary>
    private void WarmUp()
    {
        FillMetadataPadding(_maxSequences, _maxRows);
        _backend.CopyFromHost<int>(_host, _metadata);
        Body(_maxSequences, _maxRows, _maxSequences);
        _backend.Synchronize();
    }

    private void FillMetadataPadding(int sequences, int rows)
    {
        Array.Clear(_host);
        for (int b = 0; b < sequences; b++) { _host[_offStarts + b] = b; _host[_offLast + b] = b; }
        _host[_offStarts + sequences] = rows;
        for (int r = 0; r < rows; r++) _host[_offSlots + r] = -1;
    }

    public void Dispose()
    {
        foreach (var bucket in _buckets.Values) bucket.Graph?.Dispose();
        _buckets.Clear();
        _metadata.Storage.Dispose();
        _sampled.Storage.Dispose();
        _logitsF32.Storage.Dispose();
    }
}
