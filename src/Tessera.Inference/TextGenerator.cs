using Tessera.Inference.Paging;
using Tessera.Inference.Sampling;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Speculation;
using Tessera.Models;
using Tessera.Tensors;

namespace Tessera.Inference;

/// <summary>
/// Autoregressive generation with a KV cache: one forward pass over the prompt (prefill), then one token at a time
/// (decode). Greedy decoding picks the token on the device (argmax) and reads back 4 bytes per token; sampling reads the
/// token's row of logits to the host for the <see cref="Sampler"/>. The decode step is recorded once and replayed where
/// the backend can (<see cref="GenerationOptions.CaptureGraph"/>).
/// <para>
/// A model with a sliding window (Mistral) generates through a cache bounded by the window instead
/// (<see cref="GenerationOptions.BoundedWindowCache"/>): serving's paged cache, sized to the blocks one sequence holds at once
/// (window + prefill chunk positions), and its runner, with one sequence. The scheduler returns the blocks left of the
/// window to the pool after each step and the next positions take them, so the pool works as a ring buffer of blocks and
/// memory stays O(window) however long the generation; the paged kernels never read a block left of the window. The
/// dense path, and with it the non-windowed decode step and its recorded graph, is untouched. Speculative decoding runs
/// there too, as in serving: the guesses are verified in the step, and a draft model's pool shares the block table (its
/// window, or its lack of one, then counts in what the pool holds: <see cref="DraftModelPool"/>).
/// </para>
/// </summary>
public sealed class TextGenerator
{
    private readonly Transformer _model;
    private readonly Transformer? _draft;

    /// <summary>
    /// Generates with <paramref name="model"/>; with <paramref name="draftModel"/> (a smaller model of the same vocabulary,
    /// on the same backend), speculative decoding (<see cref="GenerationOptions.Speculation"/>) guesses with it instead of by
    /// prompt lookup.
    /// </summary>
    /// <exception cref="ArgumentException">The draft model's vocabulary or backend differs from the model's.</exception>
    public TextGenerator(Transformer model, Transformer? draftModel = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (draftModel is not null && draftModel.Config.VocabSize != model.Config.VocabSize)
            throw new ArgumentException($"the draft model's vocabulary ({draftModel.Config.VocabSize} tokens) differs from the model's ({model.Config.VocabSize}); a draft model must share the tokenizer");
        if (draftModel is not null && draftModel.Backend != model.Backend)
            throw new ArgumentException("the draft model must live on the model's backend (the same device)");
        _model = model;
        _draft = draftModel;
    }

    /// <summary>Whether the decode step of the last generation replayed a recorded graph.</summary>
    public bool LastRunRecorded { get; private set; }

    /// <summary>Graphs the last generation's decode step recorded: one, and one more each time its cache passed the length
    /// the recording promised the backend (<see cref="IInferenceScope.CacheBound"/>).</summary>
    public int LastRunRecordings { get; private set; }

    /// <summary>Positions the last generation's KV cache could hold (per layer): the model's context for the dense cache,
    /// the pool's blocks x block size for the bounded window cache.</summary>
    public int LastRunCachePositions { get; private set; }

    /// <summary>The most KV blocks in use at once during the last generation through the bounded window cache (0 otherwise).</summary>
    public int LastRunPeakBlocks { get; private set; }

    /// <summary>Draft tokens verified in the last generation (<see cref="GenerationOptions.Speculation"/>; 0 without).</summary>
    public int LastRunDraftTokens { get; private set; }

    /// <summary>Of <see cref="LastRunDraftTokens"/>, those the model agreed with.</summary>
    public int LastRunAcceptedDraftTokens { get; private set; }

    /// <summary>Whether the last run's grammar (<see cref="GenerationOptions.Grammar"/>) ended it with a whole document.</summary>
    public bool LastRunDocumentComplete { get; private set; }

    private const int WindowBlockSize = 16;

    /// <summary>Yields new token ids as they are produced.</summary>
    /// <exception cref="ArgumentException">The prompt is empty or does not fit the model's context.</exception>
    public IEnumerable<int> Generate(IReadOnlyList<int> prompt, GenerationOptions options)
    {
        var config = _model.Config;
        if (prompt.Count == 0) throw new ArgumentException("the prompt is empty: give at least one token");
        if (prompt.Count >= config.MaxSequenceLength)
            throw new ArgumentException($"the prompt has {prompt.Count} tokens but the model's context holds {config.MaxSequenceLength}; shorten the prompt to at most {config.MaxSequenceLength - 1} tokens");
        for (int i = 0; i < prompt.Count; i++)
            if ((uint)prompt[i] >= (uint)config.VocabSize)
                throw new ArgumentException($"prompt token {prompt[i]} at position {i} is outside the vocabulary of {config.VocabSize}");
        if (options.WindowPrefillChunk < 1)
            throw new ArgumentException($"GenerationOptions.WindowPrefillChunk ({options.WindowPrefillChunk}) must be at least 1");
        ArgumentNullException.ThrowIfNull(options.Speculation);
        options.Speculation.Validate();
        if (_draft is not null && !options.Speculation.Enabled)
            throw new ArgumentException("a draft model needs GenerationOptions.Speculation.DraftTokens above 0 (the guesses it makes a step)");
        bool bounded = config.SlidingWindow > 0 && options.BoundedWindowCache && _model.TensorParallelism is not { Size: > 1 };
        if (options.Grammar is not null)
        {
            if (options.Tokenizer is null) throw new ArgumentException("GenerationOptions.Grammar needs GenerationOptions.Tokenizer (the grammar reads the tokens' bytes)");
            if (options.Speculation.Enabled || _draft is not null) throw new ArgumentException("a grammar (structured output) runs without speculative decoding");
            if (bounded) throw new ArgumentException("a grammar (structured output) runs without the bounded window cache (GenerationOptions.BoundedWindowCache = false)");
        }
        LastRunDraftTokens = LastRunAcceptedDraftTokens = 0;
        LastRunDocumentComplete = false;
        if (bounded) return RunWindowed(prompt, options);
        return options.Speculation.Enabled ? RunSpeculative(prompt, options) : Run(prompt, options);
    }

    private IEnumerable<int> Run(IReadOnlyList<int> prompt, GenerationOptions options)
    {
        var backend = _model.Backend;
        var config = _model.Config;
        var sampler = new Sampler(options.Sampling);
        var json = options.Grammar?.Start();
        bool greedy = options.Sampling.Temperature == 0 && json is null;   // a grammar reads every step's logits on the host
        var cache = _model.CreateKvCache(batch: 1);
        LastRunCachePositions = cache.MaxSequence;
        LastRunPeakBlocks = 0;
        var row = backend.Allocate(new Shape(1, config.VocabSize), DType.F32);
        var host = new float[config.VocabSize];
        int[] chosen = new int[1];
        var stop = options.StopTokens as ISet<int> ?? new HashSet<int>(options.StopTokens);
        // Without a grammar the device draws the sampled tokens too: 4 bytes a token come back instead of the row.
        using var step = new DecodeStep(_model, cache, greedy, options.CaptureGraph, json is null ? options.Sampling : null);
        bool onDevice = greedy || step.Draws;
        LastRunRecorded = false;
        LastRunRecordings = 0;
        // LongRoPE: the first step past original_max_position_embeddings switches to the long factors, which the cached keys
        // (rotated with the short ones) do not have; transformers' Phi3ForCausalLM drops its cache there and recomputes the
        // whole sequence, and so does this loop (once: every later step is past it too).
        var rope = config.Rope;
        int longFrom = rope is { SwitchesToLong: true } ? rope.LongOriginalLength : -1;
        var history = longFrom >= 0 ? new List<int>(prompt) : null;
        try
        {
            var tokens = backend.FromHost<int>(prompt.ToArray(), new Shape(1, prompt.Count));
            var logits = _model.ForwardWithCache(tokens, cache, validateTokens: false);   // (1, T, Vpad); the prompt was checked above
            tokens.Storage.Dispose();
            var last = logits.Select(0, 0).Select(0, logits.Size(1) - 1).Slice(0, 0, config.VocabSize).Reshape(1, config.VocabSize);
            int next = greedy ? ArgMax(last, step.Tokens, chosen)
                : step.Draws ? Drawn(step, last, chosen)
                : Sample(last, row, host, sampler, prompt.Count, json, options, stop);
            for (int produced = 0; ; )
            {
                if (next < 0) yield break;                               // the grammar allows no token of the vocabulary
                if (stop.Contains(next))
                {
                    LastRunDocumentComplete = json is not null;          // a grammar allows the end-of-text token only where the text may end
                    yield break;
                }
                yield return next;
                produced++;
                if (json is not null)
                {
                    json.Advance(options.Tokenizer!.TokenBytes(next));
                    if (json.IsComplete)                                 // the document is whole
                    {
                        LastRunDocumentComplete = true;
                        yield break;
                    }
                }
                // The token just produced sits at position cache.Length; the context ends there when that is its last slot.
                if (cache.Length + 1 >= config.MaxSequenceLength || produced >= options.MaxNewTokens) yield break;
                if (history is not null)
                {
                    history.Add(next);
                    if (cache.Length == longFrom)
                    {
                        cache.Reset();
                        var all = backend.FromHost<int>(history.ToArray(), new Shape(1, history.Count));
                        var again = _model.ForwardWithCache(all, cache, validateTokens: false);
                        all.Storage.Dispose();
                        var lastRow = again.Select(0, 0).Select(0, again.Size(1) - 1).Slice(0, 0, config.VocabSize).Reshape(1, config.VocabSize);
                        next = greedy ? ArgMax(lastRow, step.Tokens, chosen)
                            : step.Draws ? Drawn(step, lastRow, chosen)
                            : Sample(lastRow, row, host, sampler, prompt.Count + produced, json, options, stop);
                        continue;
                    }
                }
                if (!onDevice)
                {
                    chosen[0] = next;
                    backend.CopyFromHost<int>(chosen, step.Tokens);
                }
                step.Run();                                          // greedy or drawn: the step's token lands in step.Tokens
                LastRunRecorded = step.Recorded;
                LastRunRecordings = step.Recordings;
                if (onDevice)
                {
                    backend.CopyToHost<int>(step.Tokens, chosen);
                    next = chosen[0];
                }
                else next = Sample(step.Logits!, row, host, sampler, prompt.Count + produced, json, options, stop);
            }
        }
        finally
        {
            row.Storage.Dispose();
        }
    }

    /// <summary>
    /// Generation with speculative decoding by prompt lookup or with the draft model (a dense cache of its own, which
    /// catches up on the tokens it lacks and then guesses one token a forward): each step feeds the last token and the
    /// guesses after it as one forward over the cache, keeps the guesses the model agrees with (greedy: each equals the argmax at the
    /// row before it; sampling: it is the token drawn at its position, <see cref="Sampler.Verify"/>) and truncates the cache
    /// past the last kept one; the model's token after it is the next one. The tokens come out one by one, so stops and
    /// limits fall on the same token as without speculation.
    /// </summary>
    private IEnumerable<int> RunSpeculative(IReadOnlyList<int> prompt, GenerationOptions options)
    {
        var backend = _model.Backend;
        var config = _model.Config;
        int k = options.Speculation.DraftTokens, vocab = config.VocabSize;
        var drafter = new NgramDrafter(options.Speculation);
        var cache = _model.CreateKvCache(batch: 1);
        var draftCache = _draft?.CreateKvCache(batch: 1);
        LastRunCachePositions = cache.MaxSequence;
        LastRunPeakBlocks = 0;
        LastRunRecorded = false;
        LastRunRecordings = 0;
        var stop = options.StopTokens as ISet<int> ?? new HashSet<int>(options.StopTokens);
        var history = new List<int>(prompt);
        bool greedy = options.Sampling.Temperature == 0;
        // LongRoPE (as in Run): a forward that starts within the original context and reaches past it would rotate its
        // positions with the long factors over keys cached with the short ones, which the model refuses. A verifying
        // forward is shortened to end at the switch; the one that starts there recomputes the sequence from position 0.
        int longFrom = config.Rope is { SwitchesToLong: true } rope ? rope.LongOriginalLength : -1;
        int draftLongFrom = _draft?.Config.Rope is { SwitchesToLong: true } draftRope ? draftRope.LongOriginalLength : -1;
        var ids = backend.Allocate(new Shape(1 + k), DType.I32);
        var host = new int[1 + k];
        // Sampled: every row drawn on the device at the position of the token it draws (TokenSampling), only ids back.
        var parameters = greedy ? null : backend.Allocate(new Shape(1 + k, TokenSampling.ParameterColumns), DType.I32);
        var positions = greedy ? null : backend.Allocate(new Shape(1 + k), DType.I32);
        if (parameters is not null)
        {
            var rows = new int[(1 + k) * TokenSampling.ParameterColumns];
            for (int r = 0; r <= k; r++)
                TokenSampling.WriteParameters(rows.AsSpan(r * TokenSampling.ParameterColumns), (float)options.Sampling.Temperature, options.Sampling.TopK, (float)options.Sampling.TopP, options.Sampling.Seed);
            backend.CopyFromHost<int>(rows, parameters);
        }
        var drafts = new int[k];
        try
        {
            var tokens = backend.FromHost<int>(prompt.ToArray(), new Shape(1, prompt.Count));
            var logits = _model.ForwardWithCache(tokens, cache, validateTokens: false);   // (1, T, Vpad); the prompt was checked above
            tokens.Storage.Dispose();
            int next = Decide(logits.Select(0, 0).Slice(0, logits.Size(1) - 1, 1), 0, out _);
            for (int produced = 0; ; )
            {
                if (stop.Contains(next)) yield break;
                yield return next;
                produced++;
                history.Add(next);
                // `next` sits at position cache.Length; the context ends there when that is its last slot.
                if (cache.Length + 1 >= config.MaxSequenceLength || produced >= options.MaxNewTokens) yield break;
                // Drafts at the positions after `next`: each needs a slot, and the token after the last one must fit too.
                int room = Math.Min(k, Math.Min(options.MaxNewTokens - produced - 1, config.MaxSequenceLength - cache.Length - 2));
                if (draftCache is not null) room = Math.Min(room, draftCache.MaxSequence - cache.Length);   // the draft's own context
                if (longFrom >= 0 && cache.Length < longFrom) room = Math.Min(room, longFrom - cache.Length - 1);   // end at the switch
                int d = room <= 0 ? 0 : draftCache is null ? drafter.Propose(history, drafts.AsSpan(0, room)) : DraftWithModel(room);
                Tensor input;
                if (longFrom >= 0 && cache.Length == longFrom)
                {
                    // The first forward past the switch: the whole sequence (history ends with `next`) and the drafts from 0.
                    cache.Reset();
                    var all = new int[history.Count + d];
                    history.CopyTo(all);
                    drafts.AsSpan(0, d).CopyTo(all.AsSpan(history.Count));
                    input = backend.FromHost<int>(all, new Shape(1, all.Length));
                }
                else
                {
                    host[0] = next;
                    drafts.AsSpan(0, d).CopyTo(host.AsSpan(1));
                    input = backend.FromHost<int>(host.AsSpan(0, 1 + d), new Shape(1, 1 + d));
                }
                var stepLogits = _model.ForwardWithCache(input, cache, validateTokens: false);   // (1, rows, Vpad): `next` and the drafts last
                input.Storage.Dispose();
                int after = Decide(stepLogits.Select(0, 0).Slice(0, stepLogits.Size(1) - (1 + d), 1 + d), d, out int accepted);
                cache.Truncate(cache.Length - (d - accepted));                // the rejected drafts' slots are written again later
                if (draftCache is not null) draftCache.Truncate(Math.Min(draftCache.Length, cache.Length));
                LastRunDraftTokens += d;
                LastRunAcceptedDraftTokens += accepted;
                for (int i = 0; i < accepted; i++)
                {
                    if (stop.Contains(drafts[i])) yield break;
                    yield return drafts[i];
                    produced++;
                    history.Add(drafts[i]);
                }
                next = after;
            }
        }
        finally
        {
            ids.Storage.Dispose();
            parameters?.Storage.Dispose();
            positions?.Storage.Dispose();
        }

        // The draft model's guesses after history: it computes the tokens its cache lacks (`next` at least) and takes the
        // argmax of the last row, then feeds each guess; its cache then holds every guess but the last. A draft model with
        // LongRoPE recomputes from position 0 where a forward would cross its own switch, as the verifying model does.
        int DraftWithModel(int room)
        {
            var draftBackend = _draft!.Backend;
            for (int i = 0; i < room; i++)
            {
                int start = draftCache!.Length, total = history.Count + i;   // the sequence so far: history, then guesses 0 .. i-1
                if (draftLongFrom >= 0 && start > 0 && start <= draftLongFrom && total > draftLongFrom)
                {
                    draftCache.Reset();
                    start = 0;
                }
                var pending = new int[total - start];
                for (int j = 0; j < pending.Length; j++) pending[j] = start + j < history.Count ? history[start + j] : drafts[start + j - history.Count];
                var feed = draftBackend.FromHost<int>(pending, new Shape(1, pending.Length));
                var rows = _draft.ForwardWithCache(feed, draftCache, validateTokens: false);   // (1, T, Vpad)
                feed.Storage.Dispose();
                draftBackend.ArgMax(rows.Select(0, 0).Slice(0, rows.Size(1) - 1, 1).Slice(1, 0, vocab), ids.Slice(0, 0, 1));
                draftBackend.CopyToHost<int>(ids.Slice(0, 0, 1), drafts.AsSpan(i, 1));
            }
            return room;
        }

        // Of the (1 + d, Vpad) logits of the last token and d drafts: how many drafts are kept, and the token after them.
        int Decide(Tensor rows, int d, out int accepted)
        {
            int n = rows.Size(0);
            accepted = 0;
            if (greedy) backend.ArgMax(rows.Slice(1, 0, vocab), ids.Slice(0, 0, n));
            else
            {
                for (int r = 0; r < n; r++) host[r] = history.Count + r;     // the token row r draws
                backend.CopyFromHost<int>(host.AsSpan(0, n), positions!.Slice(0, 0, n));
                backend.SampleRows(rows.Slice(1, 0, vocab), parameters!.Slice(0, 0, n), positions.Slice(0, 0, n), ids.Slice(0, 0, n));
            }
            backend.CopyToHost<int>(ids.Slice(0, 0, n), host.AsSpan(0, n));
            // A guess is kept while it is the token the row before it gives: the argmax, or the token drawn at its position
            // (as Sampler.Verify keeps it), which is the token decoding one a step gives there.
            while (accepted < d && host[accepted] == drafts[accepted]) accepted++;
            return host[accepted];
        }
    }

    /// <summary>
    /// Generation through a paged pool of the blocks one windowed sequence holds at once (see the class remarks). With
    /// speculation each step first guesses (prompt lookup, or the draft model in a pool of its own beside the served one,
    /// addressed through the same block table, which follows every step's tokens so that the window's release never takes
    /// a block it still reads), then verifies the guesses in the step as the engine does.
    /// </summary>
    private IEnumerable<int> RunWindowed(IReadOnlyList<int> prompt, GenerationOptions options)
    {
        var config = _model.Config;
        int chunk = options.WindowPrefillChunk, k = options.Speculation.DraftTokens;
        int maxLength = (int)Math.Min((long)prompt.Count + options.MaxNewTokens, config.MaxSequenceLength);
        var draftPool = _draft is null ? null : new DraftModelPool { SlidingWindow = _draft.Config.SlidingWindow, LookaheadTokens = k };
        int blocks = Scheduler.BlocksHeld(maxLength, WindowBlockSize, config.SlidingWindow, chunk, draftPool);
        var cacheOptions = new PagedKvCacheOptions
        {
            BlockSize = WindowBlockSize,
            MemoryBytes = blocks * PagedKvCache.BlockBytes(_model.DType, config.Layers, config.EffectiveKvHeads, config.HeadSize, WindowBlockSize),
            PrefixCaching = false,                                   // one sequence: nothing to share
        };
        using var cache = new PagedKvCache(_model.Backend, _model.DType, config.Layers, config.EffectiveKvHeads, config.HeadSize, cacheOptions);
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 1, TokenBudget = chunk, DecodingStepTokens = chunk }, config.SlidingWindow, draftPool);
        using var runner = new PagedModelRunner(_model, cache, chunk, 1, maxLength, options.CaptureGraph, k);
        using var modelDrafter = _draft is null ? null : new ModelDrafter(_draft, _model, cache, chunk, 1, maxLength, options.CaptureGraph);
        var ngram = k > 0 && _draft is null ? new NgramDrafter(options.Speculation) : null;
        var guesses = new int[k];
        bool greedy = options.Sampling.Temperature == 0;
        var stop = options.StopTokens as ISet<int> ?? new HashSet<int>(options.StopTokens);
        var sequence = new Sequence(0, prompt, maxLength) { MaxDrafts = k, DeviceSampling = greedy ? null : options.Sampling };   // drawn on the device
        scheduler.Add(sequence);
        LastRunCachePositions = cache.Blocks * cache.BlockSize;
        LastRunPeakBlocks = 0;
        LastRunRecorded = false;
        LastRunRecordings = 0;
        for (int produced = 0; ; )
        {
            int room = sequence.PendingTokens == 1 ? Math.Min(k, sequence.MaxLength - sequence.Tokens.Count - 1) : 0;
            if (room > 0 && modelDrafter is not null && scheduler.TryReserveAhead(sequence, sequence.Tokens.Count + room))
                modelDrafter.Draft([sequence], [room]);
            else if (room > 0 && ngram is not null && ngram.Propose(sequence.Tokens, guesses.AsSpan(0, room)) is > 0 and var proposed)
                sequence.AppendDrafts(guesses.AsSpan(0, proposed));
            var step = scheduler.Schedule();
            if (step.IsEmpty)
                throw new InvalidOperationException($"TextGenerator: the bounded window cache of {cache.Blocks} blocks could not place the sequence (a bug: it is sized for one sequence)");
            modelDrafter?.CatchUp(step);                              // before Complete releases what the window left behind
            LastRunPeakBlocks = Math.Max(LastRunPeakBlocks, cache.Allocator.InUse);   // before Complete releases the blocks the step left behind
            int sampled = runner.Run(step, withLogits: false, out var ids, out _);   // the argmax, or drawn on the device
            scheduler.Complete(step);
            if (sampled == 0) continue;                               // a prefill chunk short of the prompt's end
            LastRunRecorded = runner.ReplayedSteps > 0;
            // The token after the last kept guess: a guess is kept while it is the token the row before it gives (the argmax,
            // or the token drawn at its position, as Sampler.Verify keeps it), so the tokens are those decoding one a step gives.
            int drafts = step.Sequences[0].Drafts, first = sequence.Tokens.Count - drafts, accepted = 0;
            while (accepted < drafts && ids[accepted] == sequence.Tokens[first + accepted]) accepted++;
            int last = ids[accepted];
            if (drafts > 0)
            {
                scheduler.ResolveDrafts(sequence, accepted);
                LastRunDraftTokens += drafts;
                LastRunAcceptedDraftTokens += accepted;
            }
            for (int i = 0; i <= accepted; i++)                       // one by one: stops and limits fall on the same token
            {
                int token = i < accepted ? sequence.Tokens[first + i] : last;
                if (stop.Contains(token)) yield break;
                yield return token;
                produced++;
                if (prompt.Count + produced >= config.MaxSequenceLength || produced >= options.MaxNewTokens) yield break;
            }
            sequence.Append(last);
        }
    }

    /// <summary>The token <paramref name="step"/> draws on the device from <paramref name="logits"/> (1, V), read back.</summary>
    private int Drawn(DecodeStep step, Tensor logits, int[] chosen)
    {
        step.Draw(logits);
        _model.Backend.CopyToHost<int>(step.Tokens, chosen);
        return chosen[0];
    }

    private int ArgMax(Tensor logits, Tensor tokens, int[] chosen)
    {
        var backend = _model.Backend;
        backend.ArgMax(logits, tokens.Reshape(1));
        backend.CopyToHost<int>(tokens, chosen);
        return chosen[0];
    }

    private int Sample(Tensor logits, Tensor row, float[] host, Sampler sampler, long position, Constraints.JsonRecognizer? json = null,
        GenerationOptions? options = null, ISet<int>? stop = null)
    {
        var backend = _model.Backend;
        backend.Copy(logits, row);                                   // (1, V) cast to F32
        backend.CopyToHost<float>(row, host);
        if (json is null) return sampler.Sample(host, host.Length, position);
        var tokenizer = options!.Tokenizer!;
        if (!ReferenceEquals(_constrained?.Tokenizer, tokenizer)) _constrained = new Constraints.ConstrainedVocabulary(tokenizer);
        return _constrained!.Sample(sampler, options.Sampling, host, position, json, stop!);
    }

    private Constraints.ConstrainedVocabulary? _constrained;   // the last grammar's tokenizer's
}
