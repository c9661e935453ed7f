using System.Diagnostics;
using System.Text;
using System.Threading.Channels;
using Tessera.Inference.Constraints;
using Tessera.Inference.Paging;
using Tessera.Inference.Sampling;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Speculation;
using Tessera.Models;
using Tessera.Models.Tokenization;
using Tessera.Tensors;

namespace Tessera.Inference.Serving;

/// <summary>
/// Serves many requests at once from one model: one thread owns the model, the <see cref="PagedKvCache"/>, the
/// <see cref="Scheduler"/> and the <see cref="PagedModelRunner"/>, and runs steps for as long as there is work. Requests
/// arrive through a channel (<see cref="Submit"/> is thread-safe) and each gets a channel of its own for what it produces;
/// a cancelled request's sequences leave the scheduler, their blocks released, before the next step. New requests join
/// the running batch at the next step (continuous batching). Greedy choices without penalties or log-probabilities take
/// the device's argmax, and sampling ones without them are drawn on the device (<see cref="EngineOptions.SampleOnDevice"/>;
/// 4 bytes per sequence read back); the others read their row of logits and sample on this thread. With
/// <see cref="EngineOptions.AsyncScheduling"/>, a step whose tokens all come from the device is not waited for: the
/// next step is enqueued first (it reads those tokens on the device), and the host takes them in while it computes.
/// With <see cref="EngineOptions.Speculation"/>, decoding sequences carry tokens guessed by prompt lookup
/// (<see cref="NgramDrafter"/>) or a draft model (<see cref="ModelDrafter"/>) into each step, and the step's outputs at those
/// rows keep the guesses the model agrees with.
/// </summary>
public sealed class InferenceEngine : IDisposable
{
    private readonly Transformer _model;
    private readonly ITokenizer _tokenizer;
    private readonly PagedKvCache _cache;
    private readonly Scheduler _scheduler;
    private readonly PagedModelRunner _runner;
    private readonly Channel<Command> _commands = Channel.CreateUnbounded<Command>(new UnboundedChannelOptions { SingleReader = true });
    private readonly Dictionary<long, Choice> _choices = new();
    private readonly HashSet<RequestState> _requests = new();
    private readonly HashSet<int> _stopTokens;
    private readonly NgramDrafter? _drafter;
    private readonly ModelDrafter? _modelDrafter;
    private readonly int[] _drafts;
    private readonly Thread _loop;
    private readonly LoraSlotTable? _slots;          // served LoRA adapters by slot (multi-LoRA), or null
    private readonly HashSet<int> _draining = new(); // slots unloaded while requests still ran with them
    private StepInFlight? _inFlight;                 // asynchronous scheduling: enqueued, its tokens not yet taken in
    private long _nextSequence;
    private int _queued;
    private volatile Exception? _fault;
    private bool _disposed;

    private abstract record Command;
    private sealed record AddCommand(RequestState Request) : Command;
    private sealed record CancelCommand(RequestState Request) : Command;
    private sealed record ShutdownCommand : Command;
    private sealed record LoadAdapterCommand(int Slot, string Name, Models.Adapters.LoraWeightMerge Adapter, TaskCompletionSource Done) : Command;
    private sealed record UnloadAdapterCommand(int Slot) : Command;

    /// <summary>
    /// Builds the cache and the runner for <paramref name="model"/> and starts the loop thread. With
    /// <paramref name="draftModel"/> (a smaller model of the same vocabulary, on the same backend), speculative decoding
    /// guesses with it (<see cref="ModelDrafter"/>) instead of by prompt lookup; <see cref="SpeculationOptions.DraftTokens"/>
    /// must then be positive. The draft model's pool takes as many blocks as the served model's, in its own bytes.
    /// </summary>
    /// <exception cref="ArgumentException">An option is invalid, the KV memory cannot hold one full-length sequence, or the
    /// draft model does not fit the served one.</exception>
    /// <remarks>
    /// A tensor-parallel <paramref name="model"/> is rank 0's part: the other ranks of its group run <see cref="Follow"/>
    /// with their parts and the same options (threads or processes), and every step's shape and metadata reach them by a
    /// broadcast over the group.
    /// </remarks>
    public InferenceEngine(Transformer model, ITokenizer tokenizer, EngineOptions options, Transformer? draftModel = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        Options = (options ?? throw new ArgumentNullException(nameof(options))).Validate();
        if (draftModel is not null && !options.Speculation.Enabled)
            throw new ArgumentException("a draft model needs EngineOptions.Speculation.DraftTokens above 0 (the guesses it makes a step)");
        if (model.TensorParallelism is { Rank: > 0 } follower)
            throw new ArgumentException($"the engine runs on tensor-parallel rank 0; rank {follower.Rank} runs InferenceEngine.Follow");
        if (draftModel is not null && model.ServedAdapters is not null)
            throw new NotSupportedException("a draft model guesses for the base alone; with served LoRA adapters (multi-LoRA) use prompt-lookup drafts (no draft model) or none");
        if (draftModel?.TensorParallelism is { Size: > 1 })
            throw new NotSupportedException("a draft model runs whole on rank 0 (it is small): build it without tensor parallelism");
        _model = model;
        _tokenizer = tokenizer;
        var config = model.Config;
        MaxSequenceLength = MaxSequenceLengthOf(model, options);
        _cache = CacheOf(model, options);
        try
        {
            // A draft model's pool shares the block tables: the blocks then stay until neither model reads them.
            var draftPool = draftModel is null ? null
                : new DraftModelPool { SlidingWindow = draftModel.Config.SlidingWindow, LookaheadTokens = options.Speculation.DraftTokens };
            _scheduler = new Scheduler(_cache, options.Scheduler, config.SlidingWindow, draftPool);
            int needed = _scheduler.BlocksHeld(MaxSequenceLength);           // bounded by the window with one
            if (needed > _cache.Blocks)
                throw new ArgumentException($"EngineOptions.Cache.MemoryBytes: {options.Cache.MemoryBytes:N0} bytes hold {_cache.Blocks} blocks of {_cache.BlockSize} positions, " +
                    $"but one sequence of {MaxSequenceLength} positions needs {needed} ({needed * _cache.BytesPerBlock:N0} bytes){DraftModelNeed(config.SlidingWindow, draftModel)}; " +
                    "give more KV memory or a shorter MaxSequenceLength");
            _runner = RunnerOf(model, _cache, options, MaxSequenceLength);
            _modelDrafter = draftModel is null ? null
                : new ModelDrafter(draftModel, model, _cache, options.Scheduler.TokenBudget, options.Scheduler.MaxBatch, MaxSequenceLength, options.RecordGraphs);
        }
        catch
        {
            _runner?.Dispose();
            _cache.Dispose();
            throw;
        }
        _stopTokens = new HashSet<int>(options.StopTokens);
        if (tokenizer.EndOfTextId is int eot) _stopTokens.Add(eot);
        _drafter = options.Speculation.Enabled && draftModel is null ? new NgramDrafter(options.Speculation) : null;
        _drafts = new int[options.Speculation.DraftTokens];
        Metrics = new EngineMetrics(_cache.Blocks);
        _slots = model.ServedAdapters is { } served ? new LoraSlotTable(served.Slots, served.StartupNames) : null;
        _loop = new Thread(Loop) { IsBackground = true, Name = "tessera-engine" };
        _loop.Start();
    }

    /// <summary>The options.</summary>
    public EngineOptions Options { get; }

    /// <summary>Most KV blocks one sequence of <see cref="MaxSequenceLength"/> positions holds at once (<see cref="Scheduler.BlocksHeld(int)"/>:
    /// all of its blocks, or fewer with a sliding window).</summary>
    public int BlocksHeldPerSequence => _scheduler.BlocksHeld(MaxSequenceLength);

    /// <summary>Why a draft model makes a windowed model's sequences hold more blocks than the window alone would ("" when it does not).</summary>
    private static string DraftModelNeed(int slidingWindow, Transformer? draftModel)
    {
        if (draftModel is null || slidingWindow == 0) return "";
        int window = draftModel.Config.SlidingWindow;
        if (window > 0 && window <= slidingWindow) return "";
        return window == 0
            ? $", since the draft model has no sliding_window (it reads every position, so the served model's window of {slidingWindow} releases no block); use a draft model whose sliding_window is at most {slidingWindow}"
            : $", since the draft model's sliding_window ({window}) is wider than the served model's ({slidingWindow}) and its blocks are kept for it";
    }

    private static int MaxSequenceLengthOf(Transformer model, EngineOptions options) =>
        Math.Min(options.MaxSequenceLength ?? model.Config.MaxSequenceLength, model.Config.MaxSequenceLength);

    /// <summary>The pool of this rank's key/value heads; under tensor parallelism every rank's holds as many blocks (the
    /// same bytes over the same heads), so one block table addresses them all.</summary>
    private static PagedKvCache CacheOf(Transformer model, EngineOptions options) =>
        new(model.Backend, model.DType, model.Config.Layers, model.CachedKvHeads, model.Config.HeadSize, options.Cache);

    private static PagedModelRunner RunnerOf(Transformer model, PagedKvCache cache, EngineOptions options, int maxSequenceLength) =>
        new(model, cache, options.Scheduler.TokenBudget, options.Scheduler.MaxBatch, maxSequenceLength, options.RecordGraphs, options.Speculation.DraftTokens)
        {
            SeparatePhases = options.SeparateStepPhases,
            MeasureDeviceTime = options.MeasureDeviceTime,
            AdvanceOnDevice = options.AdvanceDecodeOnDevice,
        };

    /// <summary>
    /// A tensor-parallel rank other than 0 of <paramref name="model"/>'s group (a thread or a process): builds its pool and
    /// runner as rank 0's engine does from the same <paramref name="options"/> (their warm-up passes meet), then runs every
    /// step rank 0 announces (<see cref="PagedModelRunner.FollowStep"/>) until rank 0's engine is disposed.
    /// </summary>
    public static void Follow(Transformer model, EngineOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        options = (options ?? throw new ArgumentNullException(nameof(options))).Validate();
        if (model.TensorParallelism is not { Rank: > 0 })
            throw new ArgumentException("InferenceEngine.Follow runs a tensor-parallel rank other than 0; rank 0 builds the engine");
        using var cache = CacheOf(model, options);
        using var runner = RunnerOf(model, cache, options, MaxSequenceLengthOf(model, options));
        while (runner.FollowStep()) { }
    }

    /// <summary>The model served.</summary>
    public Transformer Model => _model;

    /// <summary>The tokenizer of the model.</summary>
    public ITokenizer Tokenizer => _tokenizer;

    /// <summary>Most positions of one sequence (prompt + completion).</summary>
    public int MaxSequenceLength { get; }

    /// <summary>Counters and gauges for /metrics.</summary>
    public EngineMetrics Metrics { get; }

    /// <summary>Token ids that end a completion.</summary>
    public IReadOnlyCollection<int> StopTokens => _stopTokens;

    /// <summary>Steps enqueued before the previous step's tokens reached the host (<see cref="EngineOptions.AsyncScheduling"/>).</summary>
    public long PipelinedSteps => Volatile.Read(ref _pipelined);
    private long _pipelined;

    /// <summary>Decode steps that copied no metadata to the device (<see cref="EngineOptions.AdvanceDecodeOnDevice"/>).</summary>
    public long MetadataCopiesSkipped => Volatile.Read(ref _metadataCopiesSkipped);
    private long _metadataCopiesSkipped;

    /// <summary>Steps in which every sequence verified the same number of drafts (<see cref="SpeculationOptions.UniformDrafts"/>),
    /// run in a bucket's fixed layout (recorded and replayed on backends that record).</summary>
    public long UniformVerificationSteps => Volatile.Read(ref _uniformVerifications);
    private long _uniformVerifications;

    /// <summary>Decode steps that replayed a recorded graph (0 on backends that do not record).</summary>
    public long ReplayedSteps => Volatile.Read(ref _replayed);
    private long _replayed;

    /// <summary>
    /// Queues <paramref name="request"/>; its events arrive on the returned reader, which completes after the usage event
    /// (or at once, empty, when <paramref name="cancellationToken"/> fires: the request's blocks are released).
    /// </summary>
    /// <exception cref="InvalidRequestException">The request cannot be served as asked (names the field).</exception>
    /// <exception cref="EngineOverloadedException">The waiting queue is full.</exception>
    public ChannelReader<CompletionEvent> Submit(CompletionRequest request, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_fault is { } fault) throw new InvalidOperationException($"the inference engine stopped after an error: {fault.Message}", fault);
        int maxTokens = Validate(request);
        var state = new RequestState(request, maxTokens, Stopwatch.GetTimestamp());
        if (_slots is null) Enqueue(state);
        else lock (_slots.Gate) Enqueue(state);         // resolved and queued in order with the adapters' loads and unloads
        if (cancellationToken.CanBeCanceled)
            state.Registration = cancellationToken.Register(() => _commands.Writer.TryWrite(new CancelCommand(state)));
        return state.Output.Reader;
    }

    private void Enqueue(RequestState state)
    {
        (state.Adapter, state.AdapterLoad) = ResolveAdapter(state.Request);
        if (Interlocked.Increment(ref _queued) > Options.Scheduler.MaxQueue)
        {
            int waiting = Interlocked.Decrement(ref _queued);
            Metrics.RequestRejected();
            throw new EngineOverloadedException(waiting, TimeSpan.FromSeconds(1));
        }
        _commands.Writer.TryWrite(new AddCommand(state));
    }

    /// <summary>The request's adapter slot (1-based; 0 the base) and its load number, as served now (call under the slots' lock).</summary>
    private (int Adapter, long Load) ResolveAdapter(CompletionRequest request)
    {
        if (request.AdapterName is { } name)
        {
            int slot = _slots?.SlotOf(name) ?? -1;
            if (slot < 0)
                throw new InvalidRequestException($"the LoRA adapter '{name}' is not served{(AdapterNames.Count > 0 ? $"; served: {string.Join(", ", AdapterNames)}" : "")}", "model", "model_not_found");
            return (slot + 1, _slots!.Load(slot));
        }
        if (request.Adapter == 0) return (0, 0);
        if (_slots is null || !_slots.IsServing(request.Adapter - 1))
            throw new InvalidRequestException($"adapter {request.Adapter} is not served: 0 is the base{(AdapterNames.Count > 0 ? $", and the LoRA adapters {string.Join(", ", AdapterNames.Select(n => $"{n} (adapter {AdapterSlot(n) + 1})"))}" : " and no LoRA adapter is served")}", "model", "model_not_found");
        return (request.Adapter, _slots.Load(request.Adapter - 1));
    }


    /// <summary>
    /// The names of the LoRA adapters served unmerged over the model (multi-LoRA, <see cref="Transformer.ServedAdapters"/>): a
    /// request's <see cref="CompletionRequest.Adapter"/> k picks the k-th (1-based); empty when none is served.
    /// </summary>
    public IReadOnlyList<string> AdapterNames => _slots?.Names ?? [];

    /// <summary>The slot serving the LoRA adapter <paramref name="name"/> (a request's <see cref="CompletionRequest.Adapter"/> is the slot + 1), or -1.</summary>
    public int AdapterSlot(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (_slots is null) return -1;
        lock (_slots.Gate) return _slots.SlotOf(name);
    }

    /// <summary>
    /// Loads the PEFT LoRA adapter in <paramref name="directory"/> into a free slot and serves it as <paramref name="name"/> (vLLM's
    /// /v1/load_lora_adapter): read and checked on the caller's thread exactly as a start-up adapter is (files, config, target
    /// modules, tensor shapes), then fitted to the slots (targets among the served ones, rank at most theirs), then written into its
    /// slot by the engine's loop between two steps. Completes once requests may name it. A refused load changes nothing.
    /// </summary>
    /// <exception cref="LoraAdapterException">Invalid: the model has no slots, or the adapter does not fit; Conflict: the name is
    /// served (or being loaded) already, or no slot is free.</exception>
    public async Task LoadAdapterAsync(string name, string directory, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_fault is { } fault) throw new InvalidOperationException($"the inference engine stopped after an error: {fault.Message}", fault);
        if (string.IsNullOrWhiteSpace(name)) throw new LoraAdapterException(LoraAdapterError.Invalid, "the adapter's name is empty");
        if (string.IsNullOrWhiteSpace(directory)) throw new LoraAdapterException(LoraAdapterError.Invalid, "the adapter's path is empty");
        var batch = _model.ServedAdapters;
        if (_slots is null || batch is null)
            throw new LoraAdapterException(LoraAdapterError.Invalid, "this model has no LoRA slots: serve it with --enable-lora-loading (or --lora)");
        Models.Adapters.LoraWeightMerge adapter;
        try
        {
            adapter = Models.Adapters.LoraWeightMerge.Open(directory, _model.Config);
            Models.Adapters.ServedLoraAdapters.CheckFits(batch, adapter);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or ArgumentException or NotSupportedException or UnauthorizedAccessException)
        {
            throw new LoraAdapterException(LoraAdapterError.Invalid, $"LoRA adapter '{name}': {e.Message}", e);
        }
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_slots.Gate)
        {
            var (slot, _) = _slots.Reserve(name);
            if (!_commands.Writer.TryWrite(new LoadAdapterCommand(slot, name, adapter, done)))
            {
                _slots.Free(slot);
                throw new ObjectDisposedException(nameof(InferenceEngine));
            }
        }
        await done.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Stops serving the LoRA adapter <paramref name="name"/> (vLLM's /v1/unload_lora_adapter): at once for new requests (they get
    /// model_not_found, and <see cref="AdapterNames"/> no longer lists it); requests already queued or running with it finish with
    /// its weights, and its slot is emptied and freed after the last of them ends.
    /// </summary>
    /// <exception cref="LoraAdapterException">NotFound: no adapter of that name is served.</exception>
    public void UnloadAdapter(string name)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(name);
        if (_slots is null) throw new LoraAdapterException(LoraAdapterError.NotFound, $"no LoRA adapter named '{name}' is served (this model has no LoRA slots)");
        lock (_slots.Gate)
        {
            int slot = _slots.Unload(name);
            _commands.Writer.TryWrite(new UnloadAdapterCommand(slot));
        }
    }

    /// <summary>Checks the request against the model; returns the completion length per choice.</summary>
    private int Validate(CompletionRequest request)
    {
        int context = MaxSequenceLength, vocab = _model.Config.VocabSize;
        if (request.Prompt is null || request.Prompt.Count == 0) throw new InvalidRequestException("the prompt is empty: give at least one token", "prompt");
        if (request.Prompt.Count >= context)
            throw new InvalidRequestException($"the prompt has {request.Prompt.Count} tokens but the model's context holds {context}, which leaves no room for a completion; shorten the prompt to at most {context - 1} tokens", "messages", "context_length_exceeded");
        for (int i = 0; i < request.Prompt.Count; i++)
            if ((uint)request.Prompt[i] >= (uint)vocab)
                throw new InvalidRequestException($"prompt token {request.Prompt[i]} at position {i} is outside the vocabulary of {vocab}", "prompt");
        int room = context - request.Prompt.Count;
        if (request.MaxTokens is int max)
        {
            if (max <= 0) throw new InvalidRequestException($"max_tokens ({max}) must be at least 1", "max_tokens");
            if (max > room)
                throw new InvalidRequestException($"max_tokens ({max}) plus the prompt's {request.Prompt.Count} tokens exceed the model's context of {context}; ask for at most {room}", "max_tokens", "context_length_exceeded");
        }
        if (request.Choices is < 1 or > 128) throw new InvalidRequestException($"n ({request.Choices}) must lie in [1, 128]", "n");
        if (request.TopLogprobs is < 0 or > 20) throw new InvalidRequestException($"top_logprobs ({request.TopLogprobs}) must lie in [0, 20]", "top_logprobs");
        if (request.PresencePenalty is < -2 or > 2 || double.IsNaN(request.PresencePenalty))
            throw new InvalidRequestException($"presence_penalty ({request.PresencePenalty}) must lie in [-2, 2]", "presence_penalty");
        if (request.FrequencyPenalty is < -2 or > 2 || double.IsNaN(request.FrequencyPenalty))
            throw new InvalidRequestException($"frequency_penalty ({request.FrequencyPenalty}) must lie in [-2, 2]", "frequency_penalty");
        var s = request.Sampling;
        if (!(s.Temperature >= 0 && s.Temperature <= 2)) throw new InvalidRequestException($"temperature ({s.Temperature}) must lie in [0, 2]", "temperature");
        if (!(s.TopP > 0 && s.TopP <= 1)) throw new InvalidRequestException($"top_p ({s.TopP}) must lie in (0, 1]", "top_p");
        if (s.TopK < 0) throw new InvalidRequestException($"top_k ({s.TopK}) must not be negative", "top_k");
        if (request.LogitBias is null || request.LogitBias.Count > 300)
            throw new InvalidRequestException($"logit_bias holds {request.LogitBias?.Count} entries; at most 300 are allowed", "logit_bias");
        foreach (var (token, bias) in request.LogitBias)
        {
            if ((uint)token >= (uint)vocab) throw new InvalidRequestException($"logit_bias names token {token}, outside the vocabulary of {vocab}", "logit_bias");
            if (!(bias >= -100 && bias <= 100)) throw new InvalidRequestException($"logit_bias of token {token} ({bias}) must lie in [-100, 100]", "logit_bias");
        }
        if (request.Stop.Count > 16 || request.Stop.Any(x => x is null))
            throw new InvalidRequestException($"stop holds {request.Stop.Count} entries; at most 16 non-null strings are allowed", "stop");
        int length = request.MaxTokens ?? room;
        int blocks = _scheduler.BlocksHeld(request.Prompt.Count + length);
        if (blocks > _cache.Blocks)
            throw new InvalidRequestException($"the prompt and up to {length} new tokens need {blocks} KV blocks but the server's cache has {_cache.Blocks}; ask for fewer max_tokens", "max_tokens", "context_length_exceeded");
        return length;
    }

    // ---------------------------------------------------------------- the loop (one thread owns everything below)

    private void Loop()
    {
        try
        {
            while (true)
            {
                bool handled = false;
                while (_commands.Reader.TryRead(out var command)) { Handle(command); handled = true; }
                if (_draining.Count > 0) ReleaseDrained();
                if (handled) Metrics.Gauges(_scheduler.Running.Count, _scheduler.WaitingCount, _cache.Allocator.InUse);   // a cancel frees blocks between steps
                if (_scheduler.IsIdle && _inFlight is not null) { CollectInFlight(); continue; }   // e.g. all cancelled mid-step
                if (_scheduler.IsIdle)
                {
                    _runner.ForgetDeviceTimeline();                  // waiting for work is not the device waiting for the host
                    var work = _commands.Reader.WaitToReadAsync().AsTask();
                    // The other tensor-parallel ranks wait for the next step inside a collective, which times out: while there is
                    // no work they are sent an empty step now and then.
                    if (_runner.HasFollowers)
                        while (!work.Wait(Options.TensorParallelKeepAlive)) _runner.KeepFollowersAlive();
                    if (!work.GetAwaiter().GetResult()) break;       // writer completed: shut down
                    continue;
                }
                RunStep();
            }
        }
        catch (Exception e)
        {
            _fault = e;
            while (_commands.Reader.TryRead(out var left))                // loads waiting for the loop would wait forever
                if (left is LoadAdapterCommand load) load.Done.TrySetException(new InvalidOperationException($"the inference engine stopped after an error: {e.Message}", e));
            foreach (var request in _requests) request.Output.Writer.TryComplete(e);
            _requests.Clear();
            _choices.Clear();
        }
    }

    private void Handle(Command command)
    {
        switch (command)
        {
            case AddCommand add:
                Start(add.Request);
                break;
            case ShutdownCommand:
                foreach (var open in _requests.ToList()) Cancel(open);
                break;
            case CancelCommand cancel when _requests.Contains(cancel.Request):
                Cancel(cancel.Request);
                break;
            case LoadAdapterCommand load:
                LoadAdapter(load);
                break;
            case UnloadAdapterCommand unload:
                _draining.Add(unload.Slot);
                break;
        }
    }

    /// <summary>
    /// Writes a loaded adapter into its slot, no step running (a pipelined one is taken in first); then it serves. Under tensor
    /// parallelism every rank writes its share between the same two steps (<see cref="PagedModelRunner.AnnounceAdapterLoad"/>), and
    /// the load succeeds only when every rank's did.
    /// </summary>
    private void LoadAdapter(LoadAdapterCommand load)
    {
        if (_inFlight is not null) CollectInFlight();
        var batch = _model.ServedAdapters!;
        _runner.AnnounceAdapterLoad(load.Slot, load.Adapter.Directory);
        Exception? failure = null;
        try
        {
            Models.Adapters.ServedLoraAdapters.Attach(batch, load.Slot, load.Name, load.Adapter);
        }
        catch (Exception e)
        {
            failure = e;
        }
        int failedRank = _runner.AgreeOnAdapterLoad(failure is null);
        if (failure is null && failedRank >= 0)
            failure = new InvalidDataException($"tensor-parallel rank {failedRank} could not read {load.Adapter.Directory} or write its share of it");
        if (failure is not null)
        {
            batch.Detach(load.Slot);
            _slots!.Free(load.Slot);
            load.Done.TrySetException(new LoraAdapterException(LoraAdapterError.Invalid, $"LoRA adapter '{load.Name}': {failure.Message}", failure));
            return;
        }
        _slots!.Loaded(load.Slot);
        load.Done.TrySetResult();
    }

    /// <summary>Empties and frees the unloaded slots no request runs with any more (between steps, none in flight).</summary>
    private void ReleaseDrained()
    {
        foreach (int slot in _draining.ToList())
        {
            if (_choices.Values.Any(c => c.Sequence.Adapter == slot + 1)) continue;
            if (_inFlight is not null) CollectInFlight();
            if (_choices.Values.Any(c => c.Sequence.Adapter == slot + 1)) continue;
            _runner.AnnounceAdapterUnload(slot);                         // every tensor-parallel rank empties its share now
            _model.ServedAdapters!.Detach(slot);
            _slots!.Free(slot);
            _draining.Remove(slot);
        }
    }

    /// <summary>Ends every unfinished choice of <paramref name="request"/> at once: its blocks go back to the pool before the next step.</summary>
    private void Cancel(RequestState request)
    {
        foreach (var choice in request.Choices)
        {
            if (choice.Finished) continue;
            _scheduler.Finish(choice.Sequence);
            _choices.Remove(choice.Sequence.Id);
            choice.Finished = true;
        }
        Metrics.Gauges(_scheduler.Running.Count, _scheduler.WaitingCount, _cache.Allocator.InUse);
        if (!request.Started) Interlocked.Decrement(ref _queued);
        Metrics.RequestCancelled();
        Close(request);
    }

    private void Start(RequestState request)
    {
        var r = request.Request;
        ulong seed = r.Seed ?? (ulong)Random.Shared.NextInt64();
        request.Choices = new Choice[r.Choices];
        for (int i = 0; i < r.Choices; i++)
        {
            var sampling = r.Sampling with { Seed = unchecked(seed + (ulong)i) };
            // Drawn on the device (with the penalties and bias added there, and the log-probabilities computed there) unless a
            // grammar checks tokens on the host, or the penalty and bias terms could pass what a row may have on the device.
            var counts = new Dictionary<int, int>();
            var terms = r.PresencePenalty != 0 || r.FrequencyPenalty != 0 || r.LogitBias.Count > 0
                ? new PenaltyTerms(r.PresencePenalty, r.FrequencyPenalty, r.LogitBias, counts) : null;
            bool onDevice = Options.SampleOnDevice && r.Grammar is null && (terms?.MostTerms(request.MaxTokens) ?? 0) <= PagedModelRunner.MaxTermsPerRow;
            bool draws = sampling.Temperature > 0 && onDevice;
            bool needsLogits = !onDevice && (sampling.Temperature > 0 || r.TopLogprobs is not null || terms is not null || r.Grammar is not null);
            var sequence = new Sequence(_nextSequence++, r.Prompt, r.Prompt.Count + request.MaxTokens)
            {
                Adapter = request.Adapter,
                AdapterLoad = request.AdapterLoad,
                MaxDrafts = r.Grammar is null ? Options.Speculation.DraftTokens : 0,
                DeviceSampling = draws ? sampling : null,
                DeviceLogprobs = onDevice ? r.TopLogprobs : null,
                DevicePenalties = onDevice ? terms : null,
            };
            var choice = new Choice(request, i, sequence, new Sampler(sampling), _tokenizer.CreateIncrementalDecoder(), new StopStringMatcher(r.Stop), needsLogits)
            {
                Counts = counts,
                Json = r.Grammar?.Start(),
            };
            request.Choices[i] = choice;
            _choices[sequence.Id] = choice;
            _scheduler.Add(sequence);
        }
        _requests.Add(request);
        Metrics.RequestStarted(r.Prompt.Count);
        if (r.Grammar is not null) Metrics.ConstrainedRequestStarted();
    }

    /// <summary>
    /// Schedules and enqueues a step. With asynchronous scheduling (a step where every sampled sequence is greedy without
    /// logits), the step's sampled tokens stay on the device as the next step's input (<see cref="Sequence.AppendUnresolved"/>),
    /// and the previous step's tokens are taken in while this one computes; otherwise the step is collected at once.
    /// </summary>
    private void RunStep()
    {
        long start = Stopwatch.GetTimestamp();
        if (_drafter is not null || _modelDrafter is not null) Draft();
        var step = _scheduler.Schedule();
        if (step.IsEmpty)
        {
            if (_inFlight is not null) CollectInFlight();             // e.g. every running sequence is full: its last token ends it
            else Thread.Sleep(1);
            return;
        }
        // The draft model computes the step's known tokens too, before Complete releases blocks left of the window.
        _modelDrafter?.CatchUp(step);
        long scheduled = Stopwatch.GetTimestamp();
        Metrics.Preempted(step.Preempted.Count);
        bool withLogits = false, collectAtOnce = false;
        foreach (var s in step.Sequences)
        {
            var choice = _choices[s.Sequence.Id];
            if (!choice.Request.Started)
            {
                choice.Request.Started = true;
                Interlocked.Decrement(ref _queued);
            }
            withLogits |= s.Samples && choice.NeedsLogits;
            collectAtOnce |= s.Samples && (s.Sequence.DeviceLogprobs is not null || s.Sequence.DevicePenalties is not null);   // buffers the next step reuses; counts it needs
        }
        long replayedBefore = _runner.ReplayedSteps;
        _runner.Enqueue(step, withLogits);
        if (_runner.ReplayedSteps != replayedBefore) Interlocked.Increment(ref _replayed);
        Volatile.Write(ref _metadataCopiesSkipped, _runner.MetadataCopiesSkipped);
        Volatile.Write(ref _uniformVerifications, _runner.UniformVerificationSteps);
        _scheduler.Complete(step);
        var current = new StepInFlight(step, scheduled - start, Options.AsyncScheduling && !withLogits && !collectAtOnce && !Options.Speculation.Enabled);
        if (current.Pipelined)
        {
            int row = 0;
            foreach (var s in step.Sequences)
                if (s.Samples) s.Sequence.AppendUnresolved(row++);
        }
        if (_inFlight is not null)
        {
            Interlocked.Increment(ref _pipelined);
            CollectInFlight();                                        // the previous step's tokens, while this one computes
        }
        if (current.Pipelined) _inFlight = current;
        else Collect(current);
    }

    /// <summary>
    /// Speculative decoding: gives each running sequence that is about to decode (one known token to compute) the
    /// drafter's guesses of what follows, as many as it may take and still leave room for the token sampled after them.
    /// The scheduler keeps those the step has room and blocks for.
    /// </summary>
    private void Draft()
    {
        var candidates = new List<Sequence>();
        var rooms = new List<int>();
        foreach (var sequence in _scheduler.Running)
        {
            if (sequence.MaxDrafts == 0 || sequence.Drafts > 0 || sequence.Unresolved > 0 || sequence.PendingTokens != 1) continue;
            int room = Math.Min(sequence.MaxDrafts, sequence.MaxLength - sequence.Tokens.Count - 1);
            if (room <= 0) continue;
            if (_modelDrafter is not null)
            {
                // The draft model writes its guesses' keys at the positions after the pending token: their blocks first.
                if (!_scheduler.TryReserveAhead(sequence, sequence.Tokens.Count + room)) continue;
                candidates.Add(sequence);
                rooms.Add(room);
                continue;
            }
            int proposed = _drafter!.Propose(sequence.Tokens, _drafts.AsSpan(0, room));
            if (Options.Speculation.UniformDrafts)                     // pad to the same count for every sequence
                for (; proposed < room; proposed++) _drafts[proposed] = sequence.Tokens[^1];
            if (proposed > 0) sequence.AppendDrafts(_drafts.AsSpan(0, proposed));
        }
        if (_modelDrafter is null || candidates.Count == 0) return;
        _modelDrafter.Draft(candidates, rooms);
        if (Options.Speculation.UniformDrafts)
            for (int i = 0; i < candidates.Count; i++)
                while (candidates[i].Drafts < rooms[i]) candidates[i].AppendDraft(candidates[i].Tokens[^1]);
    }

    private void CollectInFlight()
    {
        var step = _inFlight!;
        _inFlight = null;
        Collect(step);
    }

    /// <summary>Takes in a step's sampled tokens (the runner's oldest pending step): emits them, or finishes the choices.</summary>
    private void Collect(StepInFlight current)
    {
        var step = current.Step;
        _runner.Collect(out var greedy, out var logits, out var logprobs, out var topIds, out int count);
        var device = new DeviceLogprobRows(logprobs, topIds, count);
        long now = Stopwatch.GetTimestamp();
        int v = _model.Config.VocabSize, row = 0;
        foreach (var s in step.Sequences)
        {
            if (!s.Samples) continue;
            int r = row;
            row += s.SampledRows;
            // Cancelled, or (asynchronous scheduling) finished by the previous step's token: this token is discarded.
            if (!_choices.TryGetValue(s.Sequence.Id, out var choice) || choice.Finished) continue;
            if (s.Drafts > 0)
            {
                Verify(choice, greedy.Slice(r, s.SampledRows), choice.NeedsLogits ? logits.Slice(r * v, s.SampledRows * v) : default, device, r, now);
                continue;
            }
            int token;
            if (current.Pipelined)
            {
                token = greedy[r];
                _scheduler.Resolve(s.Sequence, token);
            }
            else token = choice.NeedsLogits ? Choose(choice, logits.Slice(r * v, v), s.Sequence.Tokens.Count) : greedy[r];
            if (s.Sequence.DeviceLogprobs is not null) choice.PendingLogprob = DeviceLogprob(choice, device, r, token);
            if (token < 0)
            {
                // A grammar that no token of the vocabulary can continue (a vocabulary without the bytes it needs): the choice ends.
                Finish(choice, FinishReason.Stop, choice.Matcher.Push(choice.Decoder.Flush()) + choice.Matcher.Flush(), [], null);
                continue;
            }
            Accept(choice, token, now, appended: current.Pipelined);
        }
        var (metadata, forward, readback) = _runner.LastPhaseTicks;
        var (busyMs, idleMs) = _runner.LastDeviceTimes;
        double f = 1.0 / Stopwatch.Frequency;
        Metrics.StepPhases(step.IsDecodeOnly, new StepPhaseTimes(1, step.Tokens, current.ScheduleTicks * f, metadata * f, forward * f, readback * f,
            (Stopwatch.GetTimestamp() - now) * f, busyMs / 1000, idleMs / 1000));
        Metrics.StepDone(_scheduler.Running.Count, _scheduler.WaitingCount, _cache.Allocator.InUse);
    }

    /// <summary>
    /// Speculative decoding: <paramref name="ids"/> are the model's tokens at the row before each draft and at the last row
    /// (the argmax, or drawn on the device), <paramref name="logits"/> those rows' logits when the host samples. A choice
    /// accepts drafts while each equals the token drawn at the row before it (the host's draws with the penalties counted
    /// with the drafts kept before it; <see cref="Sampler.Verify"/>), which is the token drawn there without speculation,
    /// so its tokens are the ones it would have had without speculation. The token after the last
    /// accepted draft is a token gained too (the correction, or the bonus when every draft was kept). The accepted drafts
    /// and that token are emitted in order, as if decoded one a step, and a stop ends them early.
    /// </summary>
    private void Verify(Choice choice, ReadOnlySpan<int> ids, ReadOnlySpan<float> logits, DeviceLogprobRows device, int firstRow, long now)
    {
        var sequence = choice.Sequence;
        int drafts = ids.Length - 1, first = sequence.Tokens.Count - drafts, accepted = 0, last;
        var logprobs = new TokenLogprob?[drafts + 1];
        if (!choice.NeedsLogits)
        {
            while (accepted < drafts && ids[accepted] == sequence.Tokens[first + accepted]) accepted++;
            last = ids[accepted];
            if (sequence.DeviceLogprobs is not null)
                for (int i = 0; i <= accepted; i++) logprobs[i] = DeviceLogprob(choice, device, firstRow + i, ids[i]);
        }
        else
        {
            var r = choice.Request.Request;
            var counts = r.PresencePenalty != 0 || r.FrequencyPenalty != 0 ? new Dictionary<int, int>(choice.Counts) : choice.Counts;
            int v = _model.Config.VocabSize;
            while (true)
            {
                var row = logits.Slice(accepted * v, v);
                var scratch = Penalized(choice, row, counts);
                bool kept = false;
                last = accepted < drafts ? choice.Sampler.Verify(scratch, v, sequence.Tokens[first + accepted], first + accepted, out kept)
                    : choice.Sampler.Sample(scratch, v, first + accepted);
                logprobs[accepted] = Logprob(choice, row, last);
                if (!kept) break;
                if (!ReferenceEquals(counts, choice.Counts)) counts[last] = counts.GetValueOrDefault(last) + 1;
                accepted++;
            }
        }
        Metrics.DraftsVerified(drafts, accepted);
        _scheduler.ResolveDrafts(sequence, accepted);
        for (int i = 0; i < accepted; i++)
        {
            choice.PendingLogprob = logprobs[i];
            Accept(choice, sequence.Tokens[first + i], now, appended: true);
            if (choice.Finished) return;
        }
        choice.PendingLogprob = logprobs[accepted];
        Accept(choice, last, now, appended: false);
    }

    /// <summary>A step enqueued on the runner and not yet taken in.</summary>
    private sealed record StepInFlight(ScheduledStep Step, long ScheduleTicks, bool Pipelined);

    /// <summary>
    /// Penalties, then the request's sampler (within the choice's grammar, when it has one); the log-probabilities come from
    /// the raw row. -1 when the grammar allows no token at all.
    /// </summary>
    private int Choose(Choice choice, ReadOnlySpan<float> row, long position)
    {
        var scores = Penalized(choice, row, choice.Counts);
        int token = choice.Json is { } json ? Constrained(choice, json, scores, position) : choice.Sampler.Sample(scores, row.Length, position);
        if (token >= 0) choice.PendingLogprob = Logprob(choice, row, token);
        return token;
    }

    /// <summary>
    /// A token the choice's grammar accepts (<see cref="ConstrainedVocabulary"/>), or -1 when it accepts none. The end-of-text
    /// tokens are refused until the text may end (<see cref="JsonRecognizer.CanEnd"/>); a complete document ends the choice anyway,
    /// and where more may follow (between forced tool calls) an end-of-text token ends it.
    /// </summary>
    private int Constrained(Choice choice, JsonRecognizer json, float[] scores, long position) =>
        (_constrained ??= new ConstrainedVocabulary(_tokenizer)).Sample(choice.Sampler, choice.Request.Request.Sampling, scores, position, json, _stopTokens);

    private ConstrainedVocabulary? _constrained;   // built at the first constrained request

    /// <summary>The choice's scratch row: <paramref name="row"/> with the penalties of <paramref name="counts"/> and the logit bias applied.</summary>
    private static float[] Penalized(Choice choice, ReadOnlySpan<float> row, IReadOnlyDictionary<int, int> counts)
    {
        var r = choice.Request.Request;
        if (choice.Scratch.Length != row.Length) choice.Scratch = new float[row.Length];
        row.CopyTo(choice.Scratch);
        LogitsProcessing.ApplyPenalties(choice.Scratch, counts, r.PresencePenalty, r.FrequencyPenalty);
        LogitsProcessing.ApplyBias(choice.Scratch, r.LogitBias);
        return choice.Scratch;
    }

    /// <summary><paramref name="token"/>'s log-probability and the top alternatives in the raw <paramref name="row"/>, when the request asks for them.</summary>
    private TokenLogprob? Logprob(Choice choice, ReadOnlySpan<float> row, int token)
    {
        if (choice.Request.Request.TopLogprobs is not int top) return null;
        double lse = LogProbabilities.LogSumExp(row);
        var alternatives = LogProbabilities.Top(row, top).Select(t => Describe(t.Id, t.Logprob)).ToArray();
        return new TokenLogprob(Describe(token, row[token] - lse), alternatives);
    }

    /// <summary>A step's log-probabilities computed on the device (<see cref="PagedModelRunner.Collect(out ReadOnlySpan{int}, out ReadOnlySpan{float}, out ReadOnlySpan{float}, out ReadOnlySpan{int}, out int)"/>).</summary>
    private readonly ref struct DeviceLogprobRows(ReadOnlySpan<float> logprobs, ReadOnlySpan<int> topIds, int count)
    {
        public readonly ReadOnlySpan<float> Logprobs = logprobs;
        public readonly ReadOnlySpan<int> TopIds = topIds;
        public readonly int Count = count;
    }

    /// <summary>The device's log-probability of sampling row <paramref name="row"/>'s <paramref name="token"/> and the top
    /// alternatives the request asks for (the step computed at least as many).</summary>
    private TokenLogprob DeviceLogprob(Choice choice, DeviceLogprobRows device, int row, int token)
    {
        int top = choice.Request.Request.TopLogprobs ?? 0, stride = 1 + device.Count;
        var alternatives = new TopLogprob[Math.Min(top, device.Count)];
        for (int j = 0; j < alternatives.Length; j++)
            alternatives[j] = Describe(device.TopIds[row * device.Count + j], device.Logprobs[row * stride + 1 + j]);
        return new TokenLogprob(Describe(token, device.Logprobs[row * stride]), alternatives);
    }

    private TopLogprob Describe(int id, double logprob)
    {
        var bytes = _tokenizer.TokenBytes(id).ToArray();
        return new TopLogprob(id, Encoding.UTF8.GetString(bytes), bytes, logprob);
    }

    /// <summary>Takes a sampled token into the choice: emits its text, or finishes the choice.</summary>
    /// <remarks>With <paramref name="appended"/> the token already sits in the sequence (asynchronous scheduling resolved it).</remarks>
    private void Accept(Choice choice, int token, long now, bool appended)
    {
        var request = choice.Request;
        var sequence = choice.Sequence;
        if (!request.FirstTokenSeen)
        {
            request.FirstTokenSeen = true;
            Metrics.TimeToFirstToken.Observe(Stopwatch.GetElapsedTime(request.Arrival, now).TotalSeconds);
        }
        else if (choice.LastToken != 0) Metrics.InterTokenLatency.Observe(Stopwatch.GetElapsedTime(choice.LastToken, now).TotalSeconds);
        choice.LastToken = now;
        choice.Generated++;
        Metrics.TokensGenerated(1);
        choice.Counts[token] = choice.Counts.GetValueOrDefault(token) + 1;
        var logprob = choice.PendingLogprob;
        choice.PendingLogprob = null;
        IReadOnlyList<TokenLogprob>? logprobs = logprob is null ? null : [logprob];

        if (_stopTokens.Contains(token))
        {
            if (choice.Json is not null) Metrics.WholeDocument();             // the grammar allowed the end here
            string rest = choice.Matcher.Push(choice.Decoder.Flush()) + choice.Matcher.Flush();
            Finish(choice, FinishReason.Stop, rest, [], null);
            return;
        }
        if (!appended) sequence.Append(token);
        string text = choice.Matcher.Push(choice.Decoder.Push(token));
        if (choice.Matcher.Stopped) { Finish(choice, FinishReason.Stop, text, [token], logprobs); return; }
        if (choice.Json is { } json)
        {
            json.Advance(_tokenizer.TokenBytes(token));
            if (json.IsComplete)                                              // the document is whole: nothing may follow
            {
                Metrics.WholeDocument();
                text += choice.Matcher.Push(choice.Decoder.Flush());
                text += choice.Matcher.Stopped ? "" : choice.Matcher.Flush();
                Finish(choice, FinishReason.Stop, text, [token], logprobs);
                return;
            }
        }
        // Known tokens only: with asynchronous scheduling the next step's unresolved token may already follow this one.
        if (choice.Generated >= request.MaxTokens || sequence.Tokens.Count - sequence.Unresolved >= MaxSequenceLength)
        {
            text += choice.Matcher.Push(choice.Decoder.Flush());
            text += choice.Matcher.Stopped ? "" : choice.Matcher.Flush();
            Finish(choice, choice.Matcher.Stopped ? FinishReason.Stop : FinishReason.Length, text, [token], logprobs);
            return;
        }
        request.Output.Writer.TryWrite(new CompletionEvent { Index = choice.Index, Text = text, Tokens = [token], Logprobs = logprobs });
    }

    private void Finish(Choice choice, FinishReason reason, string text, IReadOnlyList<int> tokens, IReadOnlyList<TokenLogprob>? logprobs)
    {
        var request = choice.Request;
        _scheduler.Finish(choice.Sequence);
        Metrics.Gauges(_scheduler.Running.Count, _scheduler.WaitingCount, _cache.Allocator.InUse);   // current when the client sees the end
        _choices.Remove(choice.Sequence.Id);
        choice.Finished = true;
        request.Output.Writer.TryWrite(new CompletionEvent { Index = choice.Index, Text = text, Tokens = tokens, Logprobs = logprobs, FinishReason = reason });
        if (request.Choices.All(c => c.Finished))
        {
            int cached = request.Choices.Max(c => c.Sequence.CachedPromptTokens);
            Metrics.PromptTokensCached(cached);
            request.Output.Writer.TryWrite(new CompletionEvent
            {
                Usage = new CompletionUsage(request.Request.Prompt.Count, request.Choices.Sum(c => c.Generated), cached),
            });
            Metrics.RequestFinished();
            Close(request);
        }
    }

    private void Close(RequestState request)
    {
        request.Output.Writer.TryComplete();
        request.Registration.Dispose();
        _requests.Remove(request);
    }

    /// <summary>Stops the loop after the current step; requests still running end without a usage event.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        // Running work is abandoned: the loop cancels it, becomes idle and then sees the completed writer.
        _commands.Writer.TryWrite(new ShutdownCommand());
        _commands.Writer.TryComplete();
        _loop.Join();
        foreach (var request in _requests) request.Output.Writer.TryComplete();
        if (_fault is null) _runner.StopFollowers();                    // the other tensor-parallel ranks leave their loops
        _runner.Dispose();
        _modelDrafter?.Dispose();
        _cache.Dispose();
    }

    private sealed class RequestState(CompletionRequest request, int maxTokens, long arrival)
    {
        public CompletionRequest Request { get; } = request;
        public int MaxTokens { get; } = maxTokens;
        public long Arrival { get; } = arrival;
        public Channel<CompletionEvent> Output { get; } = Channel.CreateUnbounded<CompletionEvent>(new UnboundedChannelOptions { SingleWriter = true });
        public Choice[] Choices { get; set; } = [];
        public bool Started { get; set; }
        public bool FirstTokenSeen { get; set; }
        public CancellationTokenRegistration Registration { get; set; }
        public int Adapter { get; set; }              // the served slot + 1 (0: the base), resolved when queued
        public long AdapterLoad { get; set; }         // that slot's load number then
    }

    private sealed class Choice(RequestState request, int index, Sequence sequence, Sampler sampler, IncrementalDecoder decoder, StopStringMatcher matcher, bool needsLogits)
    {
        public RequestState Request { get; } = request;
        public int Index { get; } = index;
        public Sequence Sequence { get; } = sequence;
        public Sampler Sampler { get; } = sampler;
        public IncrementalDecoder Decoder { get; } = decoder;
        public StopStringMatcher Matcher { get; } = matcher;
        public bool NeedsLogits { get; } = needsLogits;
        public required Dictionary<int, int> Counts { get; init; }
        public float[] Scratch { get; set; } = [];
        public TokenLogprob? PendingLogprob { get; set; }
        public JsonRecognizer? Json { get; init; }
        public int Generated { get; set; }
        public long LastToken { get; set; }
        public bool Finished { get; set; }
    }
}
