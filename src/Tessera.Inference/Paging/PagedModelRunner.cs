using Tessera.Distributed;
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
/// (and, when it verifies draft tokens, the rows before them) goes through the final norm and the head. The model code is
/// the dense path's layers called in a paged arrangement (the same products, norms and MLPs), so the two agree to rounding.
/// <para>
/// The step's metadata (tokens, positions, slots, block tables) is written into one host array, packed for the step's
/// shape, and copied to one device buffer with one copy of just that size; a decode bucket's layout never changes, so
/// its device addresses do not either. A step may be enqueued before the previous one's sampled ids reach the host
/// (<see cref="Enqueue"/>, <see cref="Collect(out ReadOnlySpan{int}, out ReadOnlySpan{float})"/>): its unknown input ids are read from that step's argmax on the device.
/// A decode-only step is padded to a batch-size bucket
/// (1, 2, 4, 8, ...): on a backend that records (<see cref="IGraphCapture"/>) the first step of a bucket runs normally,
/// the second is recorded and later ones replay the recording after copying the metadata (one graph per bucket). So is a
/// step in which every sequence verifies the same number k of draft tokens (speculative decoding), with 1 + k rows a
/// sequence and a graph per bucket and k.
/// </para>
/// </summary>
public sealed partial class PagedModelRunner : IDisposable
{
    private readonly Transformer _model;
    private readonly PagedKvCache _cache;
    private readonly IBackend _backend;
    private readonly int _maxRows, _maxSequences, _maxOutputs, _maxBlocks, _vocab;
    private readonly int[] _host;
    private readonly Tensor _metadata;           // (total) I32: one step's sections (Layout), packed at the front
    private readonly Tensor _sampled;            // (maxOutputs) I32: argmax of each sampling row
    private readonly Tensor _logitsF32;          // (maxOutputs, V) F32: logits cast for the host
    private readonly Tensor _logprobs;           // (maxOutputs * (1 + MaxTopLogprobs)) F32: TokenLogprobs' output, packed
    private readonly Tensor _topIds;             // (maxOutputs * MaxTopLogprobs) I32
    private float[] _logprobsHost = [];
    private int[] _topIdsHost = [];
    private readonly Tensor _termColumns;        // (maxOutputs * MaxTermsPerRow) I32: a step's penalty terms, then its bias terms
    private readonly Tensor _termValues;         // (maxOutputs * MaxTermsPerRow) F32
    private readonly List<int> _penaltyColumns = [], _biasColumns = [];
    private readonly List<float> _penaltyValues = [], _biasValues = [];
    private int[] _termColumnsHost = [];
    private float[] _termValuesHost = [];
    private readonly IReadbackBuffer[] _readbacks;   // two, alternating: a step's ids land while the next one computes
    private readonly Queue<PendingStep> _pending = new();
    private readonly Nn.Adapters.MultiLoraBatch? _served;    // the model's served LoRA adapters (multi-LoRA), or null
    private readonly int[] _adapterOfRow;                     // (maxRows): a step's adapter per row (-1: the base or padding)
    private int _nextReadback;
    private float[] _logits = [];
    private readonly bool _record;
    private readonly Dictionary<(int Size, bool FromSampled, int Rows, bool Draws, bool TemperatureOnly, int Logprobs, bool Terms), Bucket> _buckets = new();   // a graph per bucket, input kind, rows a sequence, whether the device draws (and with no filter: the draw's kernel), its log-probabilities, whether penalties apply
    private readonly int[] _onDevice;            // AdvanceOnDevice: _metadata's first _onDeviceSize values after the enqueued steps
    private int _onDeviceSize = -1;              // (-1: unknown); the token section is not tracked (resolving writes it)
    private readonly ProcessGroup? _group;        // tensor parallelism: the group whose rank 0 schedules and the others follow
    private readonly Tensor? _header;             // (HeaderLength) I32 with tensor parallelism: a step's shape, broadcast from rank 0
    private readonly int[] _headerHost = new int[HeaderLength];
    private const int HeaderLength = 9, StopHeader = 0, StepHeader = 1, IdleHeader = 2;   // header[0]: what rank 0 announces
    private const int LoadAdapterHeader = 3, UnloadAdapterHeader = 4;                     // served LoRA adapters' loads and unloads
    private readonly Tensor? _adapterRows;        // (maxRows) I32 with tensor parallelism and served adapters: a step's adapter per row
    private readonly ActivationKey _attentionOut = new("paged.att.out"), _qkv = new("paged.qkv"), _lastHidden = new("paged.last.hidden");

    /// <summary>A step enqueued and not yet collected: where its sampled ids land, and its logits when the host samples.</summary>
    private sealed record PendingStep(IReadbackBuffer? Readback, int Sampling, Tensor? Logits, long MetadataTicks, long ForwardTicks,
        int TimelineSlot = -1, int Logprobs = -1);

    /// <summary>Most alternatives a row's log-probabilities report (OpenAI's top_logprobs bound).</summary>
    public const int MaxTopLogprobs = 20;

    /// <summary>Most penalty and bias terms a sampling row may get on the device (<see cref="Sequence.DevicePenalties"/>); a
    /// choice that could need more samples on the host.</summary>
    public const int MaxTermsPerRow = 2048;

    /// <summary>
    /// Offsets of one step's metadata sections for <paramref name="Sequences"/> sequences of <paramref name="Rows"/> rows,
    /// packed so that the step copies only <see cref="Size"/> values: tokens (R), positions (R), slots (R), context lengths
    /// (S), the positions of the tokens the sampling rows draw (O), query starts (S + 1), sampling rows
    /// (<paramref name="Outputs"/>, O: S, or more when drafts are verified), their sampling parameters (O,
    /// <see cref="TokenSampling.ParameterColumns"/>), where each row's penalty terms and its bias terms start in the step's
    /// terms (O + 1 each), block tables (S, MaxBlocks). A decode bucket always has the same layout,
    /// so its recorded graph reads fixed addresses. Positions, slots, lengths and drawn positions are adjacent: what a
    /// decode step advances by one (<see cref="AdvanceOnDevice"/>) is the one range [Positions, Starts).
    /// </summary>
    private readonly record struct Layout(int Sequences, int Rows, int MaxBlocks, int Outputs)
    {
        public Layout(int sequences, int rows, int maxBlocks) : this(sequences, rows, maxBlocks, sequences) { }
        public int Positions => Rows;
        public int Slots => 2 * Rows;
        public int Lengths => 3 * Rows;
        public int Drawn => Lengths + Sequences;
        public int Starts => Drawn + Outputs;
        public int Last => Starts + Sequences + 1;
        public int Parameters => Last + Outputs;
        public int PenaltyStarts => Parameters + Outputs * TokenSampling.ParameterColumns;
        public int BiasStarts => PenaltyStarts + Outputs + 1;
        public int Tables => BiasStarts + Outputs + 1;
        public int Size => Tables + Sequences * MaxBlocks;
    }

    private sealed class Bucket
    {
        public int EagerRuns;
        public bool Unrecordable;
        public ICapturedGraph? Graph;
        public Tensor? Logits;
    }

    /// <summary>
    /// A runner for steps of at most <paramref name="maxRows"/> tokens and <paramref name="maxSequences"/> sequences of up
    /// to <paramref name="maxSequenceLength"/> positions, each verifying up to <paramref name="maxDrafts"/> draft tokens
    /// (speculative decoding: a sampled row for each, besides the sequence's last).
    /// </summary>
    public PagedModelRunner(Transformer model, PagedKvCache cache, int maxRows, int maxSequences, int maxSequenceLength, bool recordGraphs, int maxDrafts = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(cache);
        if (maxRows <= 0 || maxSequences <= 0 || maxSequences > maxRows)
            throw new ArgumentException($"PagedModelRunner: maxSequences ({maxSequences}) must lie in [1, maxRows = {maxRows}]");
        if (maxDrafts < 0) throw new ArgumentOutOfRangeException(nameof(maxDrafts), maxDrafts, "PagedModelRunner: maxDrafts must not be negative");
        if (maxSequenceLength <= 0 || maxSequenceLength > model.Config.MaxSequenceLength)
            throw new ArgumentException($"PagedModelRunner: maxSequenceLength ({maxSequenceLength}) must lie in [1, the model's context {model.Config.MaxSequenceLength}]");
        if (cache.Layers != model.Config.Layers || cache.KvHeads != model.CachedKvHeads || cache.HeadSize != model.Config.HeadSize)
            throw new ArgumentException($"PagedModelRunner: the cache ({cache.Layers} layers, {cache.KvHeads} kv heads of {cache.HeadSize}) does not fit the model ({model.Config.Layers}, {model.CachedKvHeads}, {model.Config.HeadSize})");
        if (model.Layers.SequenceParallel)
            throw new NotSupportedException("PagedModelRunner: serving runs without sequence parallelism; build the model with a plan that has it off");
        // LongRoPE switches every sequence of a step to the long factors once the step's largest position passes the original
        // context, over keys cached with the short ones; transformers recomputes a sequence there, the paged engine cannot.
        // Within the original context the short factors hold throughout, exactly.
        if (model.Config.Rope is { SwitchesToLong: true } longRope && maxSequenceLength > longRope.LongOriginalLength)
            throw new NotSupportedException($"PagedModelRunner: LongRoPE (rope_type longrope) is served up to original_max_position_embeddings ({longRope.LongOriginalLength}) positions; " +
                $"set the served context (max sequence length, {maxSequenceLength}) to at most that, or generate with the dense generator, which recomputes the sequence where the factors switch");
        _model = model;
        _cache = cache;
        _backend = model.Backend;
        _maxRows = maxRows;
        _maxSequences = maxSequences;
        _maxOutputs = (int)Math.Min(maxRows, (long)maxSequences * (1 + maxDrafts));
        // A table row holds a sequence's logical blocks; without a window they are all held, so the pool bounds them too.
        // With one, the blocks left of the window are -1 entries and a sequence may reach more logical blocks than the pool has.
        int logical = (maxSequenceLength + cache.BlockSize - 1) / cache.BlockSize;
        _maxBlocks = model.Config.SlidingWindow > 0 ? logical : Math.Min(logical, cache.Blocks);
        _vocab = model.Config.VocabSize;
        _host = new int[new Layout(maxSequences, maxRows, _maxBlocks, _maxOutputs).Size];
        _served = model.ServedAdapters;
        _adapterOfRow = _served is null ? [] : new int[maxRows];
        _onDevice = new int[_host.Length];
        _metadata = _backend.Allocate(new Shape(_host.Length), DType.I32);
        _sampled = _backend.Allocate(new Shape(_maxOutputs), DType.I32);
        _logitsF32 = _backend.Allocate(new Shape(_maxOutputs, _vocab), DType.F32);
        _logprobs = _backend.Allocate(new Shape(_maxOutputs * (1 + MaxTopLogprobs)), DType.F32);
        _topIds = _backend.Allocate(new Shape(_maxOutputs * MaxTopLogprobs), DType.I32);
        _termColumns = _backend.Allocate(new Shape(_maxOutputs * MaxTermsPerRow), DType.I32);
        _termValues = _backend.Allocate(new Shape(_maxOutputs * MaxTermsPerRow), DType.F32);
        _readbacks = new IReadbackBuffer[2];
        for (int i = 0; i < _readbacks.Length; i++)
            _readbacks[i] = _backend is IAsyncReadback async ? async.CreateReadbackBuffer(_maxOutputs) : new SynchronousReadback(_backend, _maxOutputs);
        // A tensor-parallel step waits on its collectives from the host, which a recorded graph cannot contain.
        // A mixture-of-experts model records only the steps whose rows every MoE layer routes on the device (Enqueue asks); a
        // layer that routes on the host reads the router's logits back, which a graph cannot replay.
        _record = recordGraphs && _backend is IGraphCapture && model.TensorParallelism is null;
        if (model.TensorParallelism is { Size: > 1 } tp)
        {
            _group = tp.Group;
            _header = _backend.Allocate(new Shape(HeaderLength), DType.I32);
            if (_served is not null) _adapterRows = _backend.Allocate(new Shape(maxRows), DType.I32);
        }
        WarmUp();
    }

    /// <summary>Graphs recorded so far (one per decode batch-size bucket used twice).</summary>
    public int RecordedGraphs => _buckets.Values.Count(b => b.Graph is not null);

    /// <summary>Steps that replayed a recorded graph.</summary>
    public long ReplayedSteps { get; private set; }

    /// <summary>Steps in which every sequence verified the same number of drafts, run in a bucket's fixed layout.</summary>
    public long UniformVerificationSteps { get; private set; }

    /// <summary>Whether <see cref="Enqueue"/> waits for the device after the metadata copy and after the forward pass, so that
    /// <see cref="LastPhaseTicks"/> separates the device phases (otherwise the forward's device time falls in the readback).</summary>
    public bool SeparatePhases { get; set; }

    /// <summary>
    /// Whether a decode step in which every row reads the token that the previous step sampled in the same row (asynchronous
    /// scheduling, the batch unchanged) takes its input ids straight from that step's argmax instead of resolving them in the
    /// metadata, and advances its positions, slots and context lengths by one on the device at its end (as
    /// <see cref="DecodeStep"/> advances the dense cache's positions); the next such step then copies no metadata when what
    /// the host computes for it equals that advance (every row still inside its KV block: 15 of 16 steps at batch 1 with
    /// blocks of 16). Replaces the host-to-device copy before most decode steps by one small kernel inside the step, and
    /// records a second graph per bucket. Default false.
    /// </summary>
    public bool AdvanceOnDevice { get; set; }

    /// <summary>
    /// Times each step on the device's clock when the backend keeps one (<see cref="IDeviceClock"/>): a mark before its
    /// metadata copy and one after its forward pass, read when the step is collected (<see cref="LastDeviceTimes"/>). Two
    /// event records a step; off by default. Set before the first step.
    /// </summary>
    public bool MeasureDeviceTime { get; set; }

    /// <summary>
    /// The last collected step's device milliseconds with <see cref="MeasureDeviceTime"/> (zeros without): Busy from its
    /// metadata copy to the end of its forward pass; IdleBefore from the end of the previous step's forward pass to that
    /// copy's start, which is the device waiting for the host (the previous step's readback copy, microseconds, included).
    /// After <see cref="ForgetDeviceTimeline"/> (the engine had nothing to run) the next step's IdleBefore is 0.
    /// </summary>
    public (double BusyMs, double IdleBeforeMs) LastDeviceTimes { get; private set; }

    // With MeasureDeviceTime: step k's marks are 2 (k % 3) (before its metadata) and 2 (k % 3) + 1 (after its forward). At
    // most one step is pending when another is enqueued (Enqueue refuses a third), so the last collected step's end, the
    // pending step's marks and the new step's never share a slot.
    private IDeviceTimeline? _timeline;
    private long _timedSteps;
    private int _lastEndMark = -1;            // the end mark of the last collected step; -1: none to measure idle time from

    /// <summary>Forgets the last step's end, so that time the engine spent without work is not counted as the device waiting for it.</summary>
    public void ForgetDeviceTimeline() => _lastEndMark = -1;

    /// <summary>Decode steps that copied no metadata because the device's advance had already written it (<see cref="AdvanceOnDevice"/>).</summary>
    public long MetadataCopiesSkipped { get; private set; }

    /// <summary>Steps enqueued and not yet collected (at most two).</summary>
    public int PendingSteps => _pending.Count;

    /// <summary>
    /// Stopwatch ticks of the step that <see cref="Collect(out ReadOnlySpan{int}, out ReadOnlySpan{float})"/> returned last: writing and copying its metadata, its forward
    /// pass (enqueue or replay, and with <see cref="SeparatePhases"/> its device time), and the collect (waiting for the
    /// sampled ids, reading the logits).
    /// </summary>
    public (long Metadata, long Forward, long Readback) LastPhaseTicks { get; private set; }

    /// <summary>
    /// Runs <paramref name="step"/> and waits for it: <see cref="Enqueue"/> then <see cref="Collect(out ReadOnlySpan{int}, out ReadOnlySpan{float})"/>. Returns, for each
    /// sampled row (in step order: a sequence's last row, after the rows before its drafts when it has them;
    /// <see cref="ScheduledSequence.SampledRows"/>), the argmax of its logits in <paramref name="greedy"/>; when
    /// <paramref name="withLogits"/>, also its logits row (V floats each) in <paramref name="logits"/>. Both are the runner's
    /// and are overwritten by later calls.
    /// </summary>
    public int Run(ScheduledStep step, bool withLogits, out ReadOnlySpan<int> greedy, out ReadOnlySpan<float> logits)
    {
        if (_pending.Count > 0) throw new InvalidOperationException("PagedModelRunner.Run: collect the enqueued steps first");
        Enqueue(step, withLogits);
        return Collect(out greedy, out logits);
    }

    /// <summary>
    /// Enqueues <paramref name="step"/> without waiting for it (asynchronous scheduling): its metadata copy, its forward pass
    /// and the copy of its sampled ids to the host. A token of the step that is negative, -1 - j, is the one that the
    /// previously enqueued step sampled in its j-th sampling row: it is read on the device, so this step may be enqueued
    /// before that one's ids reach the host. At most two steps may be pending, and none after a step with logits (their
    /// buffer is the next step's). Returns the step's sampling rows; <see cref="Collect(out ReadOnlySpan{int}, out ReadOnlySpan{float})"/> returns their results, in order.
    /// </summary>
    public int Enqueue(ScheduledStep step, bool withLogits)
    {
        ArgumentNullException.ThrowIfNull(step);
        if (step.IsEmpty) throw new ArgumentException("PagedModelRunner.Enqueue: the step is empty");
        int sequences = step.Sequences.Count, rows = step.Tokens, bucket = sequences;
        int sampledRows = step.SampledRows;
        if (rows > _maxRows || sequences > _maxSequences || sampledRows > _maxOutputs)
            throw new ArgumentException($"PagedModelRunner.Enqueue: the step has {rows} tokens of {sequences} sequences with {sampledRows} sampled rows; the runner takes at most {_maxRows}, {_maxSequences} and {_maxOutputs}");
        if (_pending.Count >= _readbacks.Length || _pending.Any(p => p.Logits is not null || p.Logprobs >= 0))
            throw new InvalidOperationException($"PagedModelRunner.Enqueue: {_pending.Count} steps are pending{(_pending.Any(p => p.Logits is not null || p.Logprobs >= 0) ? ", one with logits or log-probabilities" : "")}; collect first");
        bool decode = step.IsDecodeOnly;
        // A bucketed step has the same shape for every batch of its size: a decode step (a row a sequence), or a step in
        // which every sequence verifies the same number of drafts (1 + drafts rows a sequence, all sampled).
        int perSequence = decode ? 1 : UniformVerificationRows(step);
        if (perSequence > 1 && BucketOf(sequences) * perSequence > _maxRows) perSequence = 0;
        bool bucketed = perSequence > 0;
        if (bucketed) bucket = BucketOf(sequences);
        if (perSequence > 1) UniformVerificationSteps++;
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        var layout = bucketed ? new Layout(bucket, bucket * perSequence, _maxBlocks, bucket * perSequence)
            : new Layout(sequences, rows, _maxBlocks, Math.Max(sequences, sampledRows));
        int sampling = FillMetadata(step, layout, Math.Max(perSequence, 1), out bool draws, out int logprobs, out bool terms);
        bool temperatureOnly = draws && TemperatureOnly(step);
        // A step in which a row uses a served LoRA adapter runs eagerly, through the layers' unfused paths (their products are
        // no plain products then); a step of base rows only keeps the recorded graphs and fused ops.
        bool adapterStep = SetAdapterRows(step, layout);
        int outputs = bucketed ? layout.Rows : Math.Max(sampling, 1);   // a bucket computes logits for its padding rows too
        // A decode step in which a sequence computes a one-token prompt chunk without sampling (rare) keeps the gather
        // and runs eagerly: the recordings skip it.
        bool inOrder = bucketed && sampling == sequences * perSequence;
        bool fromSampled = AdvanceOnDevice && _group is null && decode && inOrder && ReadsThePreviousStepInOrder(sequences);
        if (MeasureDeviceTime && _timeline is null && _backend is IDeviceClock clock) _timeline = clock.CreateTimeline();
        int slot = MeasureDeviceTime && _timeline is not null ? (int)(_timedSteps++ % 3) : -1;
        if (slot >= 0) _timeline!.Mark(2 * slot);
        CopyMetadata(layout, fromSampled);
        if (terms) CopyTerms();
        if (_group is not null) Announce(layout, outputs, inOrder, draws, adapterStep);   // the other ranks run the same step with it
        if (SeparatePhases) _backend.Synchronize();
        long t1 = System.Diagnostics.Stopwatch.GetTimestamp();

        Tensor stepLogits;
        if (bucketed && _record && inOrder && !adapterStep && _model.RoutesExpertsOnDevice(layout.Rows))
        {
            var key = (bucket, fromSampled, perSequence, draws, temperatureOnly, logprobs, terms);
            var b = _buckets.TryGetValue(key, out var found) ? found : _buckets[key] = new Bucket();
            if (b.Graph is null && !b.Unrecordable && b.EagerRuns > 0 && _backend is IGraphCapture capture)
            {
                b.Graph = capture.Capture(() => b.Logits = Body(layout, outputs, everyRowSamples: true, fromSampled, draws, logprobs, terms, temperatureOnly));
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
                stepLogits = Body(layout, outputs, everyRowSamples: true, fromSampled, draws, logprobs, terms, temperatureOnly);
                b.EagerRuns++;
            }
        }
        else stepLogits = Body(layout, outputs, everyRowSamples: inOrder, fromSampled, draws, logprobs, terms, temperatureOnly);
        if (adapterStep) _served!.Clear();                           // the model's other users (a dense generator) see the base
        if (slot >= 0) _timeline!.Mark(2 * slot + 1);
        IReadbackBuffer? readback = null;
        if (sampling > 0)
        {
            readback = _readbacks[_nextReadback];
            _nextReadback = (_nextReadback + 1) % _readbacks.Length;
            readback.Start(_sampled.Slice(0, 0, sampling));
        }
        if (SeparatePhases) _backend.Synchronize();
        long t2 = System.Diagnostics.Stopwatch.GetTimestamp();
        _pending.Enqueue(new PendingStep(readback, sampling, withLogits && sampling > 0 ? stepLogits : null, t1 - t0, t2 - t1, slot,
            sampling > 0 ? logprobs : -1));
        return sampling;
    }

    /// <summary>
    /// Waits for the oldest enqueued step and returns its results (see <see cref="Run"/>); only the ids when it was
    /// enqueued without logits. Returns its sampling rows.
    /// </summary>
    public int Collect(out ReadOnlySpan<int> greedy, out ReadOnlySpan<float> logits) => Collect(out greedy, out logits, out _, out _, out _);

    /// <summary>
    /// <see cref="Collect(out ReadOnlySpan{int}, out ReadOnlySpan{float})"/>, and the log-probabilities the device computed for
    /// the step's sampling rows when a sequence asked for them (<see cref="Sequence.DeviceLogprobs"/>): for row j,
    /// <paramref name="logprobs"/>[j (1 + count)] is its token's and the next count are its top alternatives', whose ids are
    /// <paramref name="topIds"/>[j count ...]; <paramref name="count"/> is -1 when the step computed none.
    /// </summary>
    public int Collect(out ReadOnlySpan<int> greedy, out ReadOnlySpan<float> logits, out ReadOnlySpan<float> logprobs, out ReadOnlySpan<int> topIds, out int count)
    {
        if (!_pending.TryDequeue(out var step)) throw new InvalidOperationException("PagedModelRunner.Collect: no step is pending");
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        int sampling = step.Sampling;
        greedy = step.Readback is { } r ? r.Wait() : default;
        logits = default;
        logprobs = default;
        topIds = default;
        count = step.Logprobs;
        if (count >= 0)
        {
            int n = sampling * (1 + count), t = sampling * count;
            if (_logprobsHost.Length < n) _logprobsHost = new float[_maxOutputs * (1 + MaxTopLogprobs)];
            if (_topIdsHost.Length < t) _topIdsHost = new int[_maxOutputs * MaxTopLogprobs];
            _backend.CopyToHost<float>(_logprobs.Slice(0, 0, n), _logprobsHost.AsSpan(0, n));
            if (t > 0) _backend.CopyToHost<int>(_topIds.Slice(0, 0, t), _topIdsHost.AsSpan(0, t));
            logprobs = _logprobsHost.AsSpan(0, n);
            topIds = _topIdsHost.AsSpan(0, t);
        }
        if (step.Logits is { } stepLogits)
        {
            var f32 = _logitsF32.Slice(0, 0, sampling);
            _backend.Copy(stepLogits.Slice(0, 0, sampling), f32);
            if (_logits.Length < sampling * _vocab) _logits = new float[_maxOutputs * _vocab];
            _backend.CopyToHost<float>(f32, _logits.AsSpan(0, sampling * _vocab));
            logits = _logits.AsSpan(0, sampling * _vocab);
        }
        LastPhaseTicks = (step.MetadataTicks, step.ForwardTicks, System.Diagnostics.Stopwatch.GetTimestamp() - t0);
        LastDeviceTimes = default;
        if (step.TimelineSlot >= 0 && _timeline is { } timeline)
        {
            int begun = 2 * step.TimelineSlot, ended = begun + 1;
            double busy = timeline.ElapsedMilliseconds(begun, ended);
            double idle = _lastEndMark < 0 ? 0 : Math.Max(0, timeline.ElapsedMilliseconds(_lastEndMark, begun));
            LastDeviceTimes = (busy, idle);
            _lastEndMark = ended;
        }
        return sampling;
    }

    /// <summary>
    /// Tensor parallelism, rank 0: broadcasts the step's shape (a header: <c>StepHeader</c>, sequences, rows, outputs, the rows
    /// that go to the head, whether every row samples in order, the metadata's length, whether the device draws) and then its
    /// metadata, already on this rank's device, to the other ranks, which run the same forward pass with them
    /// (<see cref="FollowStep"/>) and draw the same ids (the next step may read them on the device). A step in which a row uses a
    /// served LoRA adapter says so (header[8]) and broadcasts its rows' adapters too, so that every rank masks the same rows.
    /// </summary>
    private void Announce(Layout layout, int outputs, bool everyRowSamples, bool draws, bool adapterStep)
    {
        SendHeader([StepHeader, layout.Sequences, layout.Rows, layout.Outputs, outputs, everyRowSamples ? 1 : 0, layout.Size, draws ? 1 : 0, adapterStep ? 1 : 0]);
        _group!.Broadcast(_metadata.Slice(0, 0, layout.Size), 0).WaitOnDevice();
        if (adapterStep) AnnounceAdapterRows(layout.Rows);
    }

    private void SendHeader(int[] header)
    {
        _backend.CopyFromHost<int>(header, _header!);
        _group!.Broadcast(_header!, 0).WaitOnDevice();
    }

    /// <summary>
    /// Tensor parallelism, a rank other than 0: receives the next step rank 0 announces and runs its forward pass over this
    /// rank's pool (its own key/value heads, at the slots of rank 0's block tables); the model's collectives inside meet rank
    /// 0's. False when rank 0 announced the end (<see cref="StopFollowers"/>).
    /// </summary>
    public bool FollowStep()
    {
        if (_group is null || _group.Rank == 0) throw new InvalidOperationException("PagedModelRunner.FollowStep: only a tensor-parallel rank other than 0 follows");
        _group.Broadcast(_header!, 0).WaitOnDevice();
        _backend.CopyToHost<int>(_header!, _headerHost);
        var h = _headerHost;
        if (h[0] == StopHeader) return false;
        if (h[0] == IdleHeader) return true;                              // rank 0 is idle: nothing to run
        if (h[0] == LoadAdapterHeader)
        {
            FollowAdapterLoad(slot: h[1], pathLength: h[2]);
            return true;
        }
        if (h[0] == UnloadAdapterHeader)
        {
            _served!.Detach(h[1]);
            return true;
        }
        var layout = new Layout(h[1], h[2], _maxBlocks, h[3]);
        if (layout.Size != h[6] || layout.Size > _host.Length)
            throw new InvalidOperationException($"PagedModelRunner.FollowStep: rank 0 announced {h[6]} metadata values for a layout of {layout.Size} (this rank holds {_host.Length}): the ranks were built with different options");
        _group.Broadcast(_metadata.Slice(0, 0, layout.Size), 0).WaitOnDevice();
        if (h[8] == 1) FollowAdapterRows(layout.Rows);
        else _served?.Clear();
        Body(layout, h[4], everyRowSamples: h[5] == 1, draws: h[7] == 1);
        _served?.Clear();
        return true;
    }

    /// <summary>Tensor parallelism, rank 0, at shutdown: the other ranks' <see cref="FollowStep"/> returns false.</summary>
    public void StopFollowers() => AnnounceNothing(StopHeader);

    /// <summary>Tensor parallelism, rank 0, idle: an empty step, so that the other ranks' wait in <see cref="FollowStep"/> (a
    /// collective) does not reach its timeout.</summary>
    public void KeepFollowersAlive() => AnnounceNothing(IdleHeader);

    /// <summary>Whether this is rank 0 of a tensor-parallel group, whose other ranks follow its steps.</summary>
    public bool HasFollowers => _group is { Rank: 0 };

    private void AnnounceNothing(int kind)
    {
        if (!HasFollowers) return;
        var header = new int[HeaderLength];
        header[0] = kind;
        SendHeader(header);
    }

    /// <summary>Whether row i's token of the step just written is -1 - i for every real row: the previous step's i-th sample.</summary>
    private bool ReadsThePreviousStepInOrder(int sequences)
    {
        for (int i = 0; i < sequences; i++)
            if (_host[i] != -1 - i) return false;
        return true;
    }

    /// <summary>
    /// Copies the step's metadata to the device, unless (<paramref name="fromSampled"/>, <see cref="AdvanceOnDevice"/>) the
    /// device already holds it: the previous steps' copies and advances are tracked in _onDevice, the token section aside
    /// (such a step does not read it). Tracks this step's advance, which its body enqueues after the last use.
    /// </summary>
    private void CopyMetadata(Layout layout, bool fromSampled)
    {
        int size = layout.Size, from = layout.Positions;
        if (fromSampled && _onDeviceSize == size && _host.AsSpan(from, size - from).SequenceEqual(_onDevice.AsSpan(from, size - from)))
            MetadataCopiesSkipped++;
        else
        {
            _backend.CopyFromHost<int>(_host.AsSpan(0, size), _metadata.Slice(0, 0, size));
            if (AdvanceOnDevice)
            {
                _host.AsSpan(0, size).CopyTo(_onDevice);
                _onDeviceSize = size;
            }
        }
        if (fromSampled)
            for (int i = from; i < layout.Starts; i++) _onDevice[i]++;
    }

    /// <summary>Copies the step's penalty and bias terms (penalties first) to the device buffers the step's rows index.</summary>
    private void CopyTerms()
    {
        int p = _penaltyColumns.Count, n = p + _biasColumns.Count;
        if (_termColumnsHost.Length < n) { _termColumnsHost = new int[Math.Max(n, 1024)]; _termValuesHost = new float[_termColumnsHost.Length]; }
        _penaltyColumns.CopyTo(_termColumnsHost); _biasColumns.CopyTo(_termColumnsHost, p);
        _penaltyValues.CopyTo(_termValuesHost); _biasValues.CopyTo(_termValuesHost, p);
        _backend.CopyFromHost<int>(_termColumnsHost.AsSpan(0, n), _termColumns.Slice(0, 0, n));
        _backend.CopyFromHost<float>(_termValuesHost.AsSpan(0, n), _termValues.Slice(0, 0, n));
    }

    /// <summary>
    /// Speculative decoding: 1 + k when every sequence of <paramref name="step"/> computes its decode token and k &gt; 0
    /// drafts, the same k for all (every row sampled); 0 otherwise.
    /// </summary>
    private static int UniformVerificationRows(ScheduledStep step)
    {
        int drafts = step.Sequences[0].Drafts;
        if (drafts == 0) return 0;
        foreach (var s in step.Sequences)
            if (s.Drafts != drafts || s.Count != 1 + drafts || !s.Samples) return 0;
        return 1 + drafts;
    }

    /// <summary>
    /// Tells the model's served LoRA adapters which adapter each of the step's rows uses (in the order <see cref="FillMetadata"/>
    /// lays the rows out; padding rows none); clears them for a step of base rows only. Returns whether any row uses one.
    /// </summary>
    private bool SetAdapterRows(ScheduledStep step, Layout layout)
    {
        if (_served is null) return false;
        bool any = false;
        foreach (var scheduled in step.Sequences) any |= scheduled.Sequence.Adapter != 0;
        if (!any)
        {
            _served.Clear();
            return false;
        }
        var rows = _adapterOfRow.AsSpan(0, layout.Rows);
        rows.Fill(-1);
        int row = 0;
        foreach (var (sequence, _, count) in step.Sequences)
        {
            if (sequence.Adapter < 0 || sequence.Adapter > _served.Slots)
                throw new InvalidOperationException($"PagedModelRunner: sequence {sequence.Id} asks for adapter {sequence.Adapter}; the model has {_served.Slots} adapter slots");
            rows.Slice(row, count).Fill(sequence.Adapter - 1);
            row += count;
        }
        _served.SetRows(rows);
        return true;
    }

    /// <summary>
    /// Whether no row the device draws in <paramref name="step"/> has top-k or top-p (<see cref="IBackend.SampleRows"/>'s
    /// temperatureOnly, which lets CUDA take the one-CTA kernel at many rows). The other ranks of a tensor-parallel step are not
    /// told and draw with the filtered choice: the same tokens.
    /// </summary>
    private bool TemperatureOnly(ScheduledStep step)
    {
        foreach (var scheduled in step.Sequences)
            if (scheduled.SampledRows > 0 && scheduled.Sequence.DeviceSampling is { } drawing && !drawing.TemperatureOnly(_vocab)) return false;
        return true;
    }

    /// <summary>Writes the host metadata; pads to the layout's sequences (<paramref name="padRows"/> rows each) and rows.
    /// Returns the sampling rows; <paramref name="draws"/>: whether a sequence's tokens are drawn on the device
    /// (<see cref="Sequence.DeviceSampling"/>; the other rows' parameters say temperature 0, the argmax).</summary>
    private int FillMetadata(ScheduledStep step, Layout layout, int padRows, out bool draws, out int logprobs, out bool terms)
    {
        draws = false;
        logprobs = -1;
        _penaltyColumns.Clear(); _penaltyValues.Clear(); _biasColumns.Clear(); _biasValues.Clear();
        Array.Clear(_host, layout.Parameters, layout.Outputs * TokenSampling.ParameterColumns);
        int bs = _cache.BlockSize, row = 0, sampling = 0, b = 0, sequences = layout.Sequences, rows = layout.Rows;
        Array.Clear(_host, layout.Tables, sequences * _maxBlocks);
        foreach (var scheduled in step.Sequences)
        {
            var (sequence, start, count) = scheduled;
            _host[layout.Starts + b] = row;
            var table = sequence.BlockTable;
            if (table.Count > _maxBlocks)
                throw new InvalidOperationException($"PagedModelRunner: sequence {sequence.Id} holds {table.Count} blocks, more than the {_maxBlocks} a table row has");
            for (int i = 0; i < table.Count; i++) _host[layout.Tables + b * _maxBlocks + i] = table[i];
            for (int j = 0; j < count; j++, row++)
            {
                int position = start + j;
                _host[row] = sequence.Tokens[position];                      // negative: sampled by the previous step, resolved on the device
                _host[layout.Positions + row] = position;
                _host[layout.Slots + row] = table[position / bs] * bs + position % bs;
            }
            _host[layout.Lengths + b] = start + count;
            var drawing = sequence.DeviceSampling;
            draws |= drawing is not null && scheduled.SampledRows > 0;
            if (scheduled.SampledRows > 0 && sequence.DeviceLogprobs is int top) logprobs = Math.Max(logprobs, Math.Clamp(top, 0, Math.Min(MaxTopLogprobs, _vocab)));
            int firstGuess = sequence.Tokens.Count - scheduled.Drafts;
            for (int j = scheduled.SampledRows; j > 0; j--)
            {
                _host[layout.PenaltyStarts + sampling] = _penaltyColumns.Count;
                _host[layout.BiasStarts + sampling] = _biasColumns.Count;
                if (sequence.DevicePenalties is { } penalties)                    // the terms of the row after k guesses
                {
                    int k = scheduled.SampledRows - j, before = _penaltyColumns.Count + _biasColumns.Count;
                    penalties.Write(sequence.Tokens, firstGuess, k, _penaltyColumns, _penaltyValues, _biasColumns, _biasValues);
                    if (_penaltyColumns.Count + _biasColumns.Count - before > MaxTermsPerRow)
                        throw new InvalidOperationException($"PagedModelRunner: sequence {sequence.Id}'s row has {_penaltyColumns.Count + _biasColumns.Count - before} penalty and bias terms, more than the {MaxTermsPerRow} a row may have on the device");
                }
                _host[layout.Last + sampling] = row - j;                          // the last row, and each draft's predecessor
                _host[layout.Drawn + sampling] = start + count - j + 1;           // the position of the token it draws
                if (drawing is not null)
                    TokenSampling.WriteParameters(_host.AsSpan(layout.Parameters + sampling * TokenSampling.ParameterColumns, TokenSampling.ParameterColumns),
                        (float)drawing.Temperature, drawing.TopK, (float)drawing.TopP, drawing.Seed);
                sampling++;
            }
            b++;
        }
        // Padding: padRows rows per extra sequence, no context, no slot; their logits are computed and ignored.
        for (; b < sequences; b++)
        {
            _host[layout.Starts + b] = row;
            _host[layout.Lengths + b] = 0;
            for (int j = 0; j < padRows; j++, row++)
            {
                _host[row] = 0;
                _host[layout.Positions + row] = 0;
                _host[layout.Slots + row] = -1;
            }
        }
        for (; row < rows; row++) { _host[row] = 0; _host[layout.Positions + row] = 0; _host[layout.Slots + row] = -1; }
        _host[layout.Starts + sequences] = rows;
        for (int i = sampling; i < layout.Outputs; i++) { _host[layout.Last + i] = Math.Max(rows - 1, 0); _host[layout.Drawn + i] = 0; }
        // Penalty terms first, bias terms after them in the same buffers: each section's starts end at its own total.
        terms = _penaltyColumns.Count + _biasColumns.Count > 0;
        for (int i = sampling; i <= layout.Outputs; i++) { _host[layout.PenaltyStarts + i] = _penaltyColumns.Count; _host[layout.BiasStarts + i] = _biasColumns.Count; }
        for (int i = 0; i <= layout.Outputs; i++) _host[layout.BiasStarts + i] += _penaltyColumns.Count;
        return sampling;
    }

    /// <summary>The forward pass over the metadata in <paramref name="layout"/>; logits (outputs, V). With
    /// <paramref name="everyRowSamples"/> (a decode step in which every sequence samples) the rows go to the head as they are,
    /// without the gather of the sampling rows. With <paramref name="fromSampled"/> (<see cref="AdvanceOnDevice"/>) row i's
    /// input id is the previous step's i-th argmax, and the step's positions, slots and lengths advance by one at its end.
    /// With <paramref name="draws"/> the ids are drawn on the device with each row's sampling parameters
    /// (<see cref="IBackend.SampleRows"/>) rather than the argmax; with <paramref name="logprobs"/> 0 or more the rows' tokens'
    /// log-probabilities and their top alternatives follow (<see cref="IBackend.TokenLogprobs"/>); <paramref name="temperatureOnly"/>:
    /// no drawn row has top-k or top-p (<see cref="TemperatureOnly"/>).</summary>
    private Tensor Body(Layout layout, int outputs, bool everyRowSamples = false, bool fromSampled = false, bool draws = false, int logprobs = -1, bool terms = false,
        bool temperatureOnly = false)
    {
        var config = _model.Config;
        int sequences = layout.Sequences, rows = layout.Rows;
        using var scope = (_backend as IInferenceScope)?.EnterInference();   // nothing here writes a weight
        var batch = new PagedBatch(
            _metadata.Narrow(layout.Tables, new Shape(sequences, _maxBlocks)),
            _metadata.Narrow(layout.Starts, new Shape(sequences + 1)),
            _metadata.Narrow(layout.Lengths, new Shape(sequences)),
            _metadata.Narrow(layout.Slots, new Shape(rows)),
            _cache.BlockSize);
        var positions = _metadata.Narrow(layout.Positions, new Shape(rows));
        Tensor tokens;                                                          // (N) I32
        if (fromSampled) tokens = _sampled.Slice(0, 0, rows);                   // row i: the previous step's i-th sample
        else
        {
            tokens = _metadata.Narrow(0, new Shape(rows));
            _backend.ResolveSampledIds(tokens, _sampled);                       // tokens the previous step sampled on the device
        }
        var ctx = PassContext.Transient(_model.Activations);
        var x = _model.TokenEmbedding.Forward(ctx, tokens);                     // (N, C): the residual stream, updated in place
        _model.PositionEmbedding?.Forward(ctx, positions, x, accumulate: true);
        _model.ScaleEmbeddings(x);                                              // Gemma's sqrt(C); nothing otherwise
        foreach (var block in _model.Blocks)
        {
            Attention(ctx, block, x, positions, batch);
            block.AccumulateMlp(ctx, x);
        }
        Tensor last;                                                            // (M, C): the sampling rows
        if (everyRowSamples) last = x;                                          // a decode step whose rows all sample, in order
        else
        {
            last = ctx.Buffer(_lastHidden, new Shape(outputs, config.Embedding), x.DType);
            _backend.EmbeddingForward(_metadata.Narrow(layout.Last, new Shape(outputs)), x, last);
        }
        var logits = _model.ForwardHead(ctx, last).Slice(1, 0, config.VocabSize);   // (M, V): every column, gathered over tensor-parallel ranks
        var scores = logits;                                                   // what the tokens are drawn from
        if (terms)
        {
            // OpenAI's penalties, then logit_bias, added in F32 to a copy of the rows (the raw rows stay for the log-probabilities).
            scores = _logitsF32.Slice(0, 0, outputs);
            _backend.Copy(logits, scores);
            _backend.AddToColumns(scores, _metadata.Narrow(layout.PenaltyStarts, new Shape(outputs + 1)), _termColumns, _termValues);
            _backend.AddToColumns(scores, _metadata.Narrow(layout.BiasStarts, new Shape(outputs + 1)), _termColumns, _termValues);
        }
        if (draws)
            _backend.SampleRows(scores, _metadata.Narrow(layout.Parameters, new Shape(outputs, TokenSampling.ParameterColumns)),
                _metadata.Narrow(layout.Drawn, new Shape(outputs)), _sampled.Slice(0, 0, outputs), temperatureOnly);
        else _backend.ArgMax(scores, _sampled.Slice(0, 0, outputs));
        if (logprobs >= 0)
            _backend.TokenLogprobs(logits, _sampled.Slice(0, 0, outputs), logprobs, _logprobs.Narrow(0, new Shape(outputs, 1 + logprobs)),
                logprobs > 0 ? _topIds.Narrow(0, new Shape(outputs, logprobs)) : null);
        // The next step's positions, slots and lengths if every row stays in its block (CopyMetadata checks that on the host).
        if (fromSampled) _backend.Increment(_metadata.Narrow(layout.Positions, new Shape(layout.Starts - layout.Positions)), 1);
        return logits;
    }

    private void Attention(in PassContext ctx, Models.Blocks.TransformerBlock block, Tensor x, Tensor positions, PagedBatch batch)
    {
        var attention = block.Attention;
        int n = x.Size(0), h = attention.Heads, k = attention.KvHeads, d = attention.HeadSize;
        var pool = _cache.Pool(block.Index);
        var scales = _cache.Scales(block.Index);                                                     // null unless the pool is I8 or F8E4M3
        Tensor qkv;                                                                                  // (N, H+2K, D)
        if (attention.Rope is { } frequencies && block.Norm1 is RmsNorm rms && attention.Qkv.IsPlainProduct && attention.QueryNorm is null)
        {
            // Llama: the norm, the QKV product, the rotation and the append to the rows' slots as one op (one launch for a
            // decode step's few rows on a GPU, as in the dense decode step).
            qkv = ctx.Buffer(_qkv, new Shape(n, h + 2 * k, d), x.DType);
            _backend.MatMulRopePagedAppend(x, rms.Prologue, attention.Qkv.Weight.Value, attention.Qkv.Bias?.Value, qkv, h, pool, positions, batch, frequencies, scales);
        }
        else if (attention.Rope is { } rotation && block.Norm1 is RmsNorm qrms && attention.Qkv.IsPlainQuantizedProduct && attention.QueryNorm is null)
        {
            // The same op over a quantized weight (one launch for an int4 or int8 decode step's few rows on a GPU).
            qkv = ctx.Buffer(_qkv, new Shape(n, h + 2 * k, d), x.DType);
            _backend.QuantizedMatMulRopePagedAppend(x, qrms.Prologue, attention.Qkv.Weight.Quantized!, attention.Qkv.Bias?.Value, qkv, h, pool,
                positions, batch, rotation, scales);
        }
        else if (attention.Rope is { } headRope && attention.QueryNorm is { } queryNorm && attention.KeyNorm is { } keyNorm)
        {
            // Qwen3, Gemma 3: the product (its norm in front where it fuses), then the head norms, the rotation and the append
            // to the rows' slots as one op.
            qkv = attention.Qkv.ForwardNormalized(ctx, x, block.Norm1).Reshape(n, h + 2 * k, d);
            _backend.NormalizeHeadsRopePagedAppend(qkv, h, queryNorm.Prologue, keyNorm.Prologue, pool, positions, batch, headRope, scales);
        }
        else
        {
            // The product on its own (quantized weights, adapters), then the rotation of the q and k heads at each row's
            // position and the append as one op, or the append alone.
            qkv = attention.Qkv.ForwardNormalized(ctx, x, block.Norm1).Reshape(n, h + 2 * k, d);
            attention.NormalizeHeads(ctx, qkv);
            if (attention.Rope is { } rope) _backend.RopePagedAppend(qkv, h, pool, positions, batch, rope, scales);
            else _backend.PagedAppend(qkv.Slice(1, h, 2 * k), pool, batch, scales);
        }
        var output = ctx.Buffer(_attentionOut, new Shape(n, h, d), x.DType);                        // (N, H, D)
        _backend.PagedAttention(qkv.Slice(1, 0, h), pool, batch, output, attention.Scale, attention.SlidingWindow, scales, attention.SoftCap);
        block.AccumulateAttentionOutput(ctx, output.Reshape(n, h * d), x);
    }

    private int BucketOf(int sequences)
    {
        int bucket = 1;
        while (bucket < sequences) bucket <<= 1;
        return Math.Min(bucket, _maxSequences);
    }

    /// <summary>
    /// One forward at the largest shapes (every row padding: nothing written, no context), so the pooled activation buffers
    /// reach their final size before any step is recorded: a recording must never see a buffer reallocated under it. Then,
    /// on a backend that times its products per bucket of row counts (<see cref="IMatMulRowBuckets"/>), one forward at each
    /// bucket's row count, so that no served step waits for a timing: on the H200 (2026-12-03) buckets first met while
    /// serving made the mixed steps of an 8-stream level take 15 ms for 1,368 rows.
    /// </summary>
    private void WarmUp()
    {
        // The first pass also runs what a step does after the head when rows are drawn on the device (penalty terms, the draw,
        // log-probabilities), so that their kernels are built before the first request that needs them.
        WarmUp(_maxSequences, _maxRows, _maxOutputs, everyKernel: true);
        // A mixture of experts that routes fewer rows than the largest step on the device sizes its device path's buffers at
        // that bound, which the largest step (on the host path) left alone.
        int deviceRows = _model.ExpertDeviceRowBound();
        if (deviceRows > 0 && deviceRows < _maxRows)
            WarmUp(Math.Min(_maxSequences, deviceRows), deviceRows, Math.Min(_maxSequences, Math.Min(_maxOutputs, deviceRows)));
        if (_backend is IMatMulRowBuckets buckets)
            foreach (int rows in buckets.TimedRowCounts(_maxRows))
                if (rows < _maxRows) WarmUp(Math.Min(_maxSequences, rows), rows, Math.Min(_maxSequences, rows));
    }

    private void WarmUp(int sequences, int rows, int outputs, bool everyKernel = false)
    {
        var layout = new Layout(sequences, rows, _maxBlocks, outputs);
        _served?.Clear();                                            // warm-up rows are the base's
        Array.Clear(_host);
        for (int b = 0; b < layout.Sequences; b++) _host[layout.Starts + b] = b;
        for (int i = 0; i < outputs; i++) _host[layout.Last + i] = i;
        _host[layout.Starts + layout.Sequences] = layout.Rows;
        for (int r = 0; r < layout.Rows; r++) _host[layout.Slots + r] = -1;
        _backend.CopyFromHost<int>(_host, _metadata);
        _backend.Fill(_sampled, 0);
        if (everyKernel) Body(layout, outputs, draws: true, logprobs: Math.Min(MaxTopLogprobs, _vocab), terms: true);   // no terms, temperature 0: the argmax
        else Body(layout, outputs);
        _backend.Synchronize();
        _onDeviceSize = -1;
    }

    public void Dispose()
    {
        _pending.Clear();
        _backend.Synchronize();
        (_timeline as IDisposable)?.Dispose();
        _timeline = null;
        foreach (var bucket in _buckets.Values) bucket.Graph?.Dispose();
        _buckets.Clear();
        foreach (var readback in _readbacks) readback.Dispose();
        _metadata.Storage.Dispose();
        _header?.Storage.Dispose();
        _adapterRows?.Storage.Dispose();
        _sampled.Storage.Dispose();
        _logitsF32.Storage.Dispose();
        _logprobs.Storage.Dispose();
        _topIds.Storage.Dispose();
        _termColumns.Storage.Dispose();
        _termValues.Storage.Dispose();
    }

    /// <summary>The readback of a backend that computes synchronously: the copy happens at <see cref="Start"/>.</summary>
    private sealed class SynchronousReadback(IBackend backend, int capacity) : IReadbackBuffer
    {
        private readonly int[] _values = new int[capacity];
        private int _count;

        public int Capacity => capacity;

        public void Start(Tensor source)
        {
            if (source.NumElements > capacity) throw new ArgumentException($"SynchronousReadback.Start: {source.NumElements} values exceed the capacity of {capacity}");
            _count = (int)source.NumElements;
            backend.CopyToHost<int>(source, _values.AsSpan(0, _count));
        }

        public ReadOnlySpan<int> Wait() => _values.AsSpan(0, _count);

        public void Dispose() { }
    }
}
