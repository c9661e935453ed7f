using Tessera.Inference.Paging;

namespace Tessera.Inference.Scheduling;

/// <summary>
/// Iteration-level scheduling (Orca's continuous batching, vLLM's scheduler) over a <see cref="PagedKvCache"/>. Each
/// <see cref="Schedule"/> builds one step: first every decoding sequence gets its token, then running sequences in
/// arrival order get a chunk of their prompt, then waiting sequences join, first come first served, while the batch, the
/// step's token limit and the free blocks allow. The limit is <see cref="SchedulerOptions.TokenBudget"/> for a step without
/// decodes and the smaller <see cref="SchedulerOptions.DecodingStepTokens"/> for one with them (Sarathi-Serve's stall-free
/// batching: a long prompt is split into chunks over several short steps, so the running sequences keep decoding at a
/// steady pace instead of waiting behind a whole budget of prefill). When a running sequence
/// needs a block and none is free, the most recently arrived running sequence is preempted: its blocks are released and
/// it goes back to the front of the queue, to be recomputed from its tokens (recompute is cheaper than swapping to the
/// host for the short sequences this serves, and needs no host pool). A waiting sequence first takes the cached blocks
/// of the longest prompt prefix already computed (<see cref="KvBlockAllocator"/>). Not thread-safe: the engine's loop owns it.
/// <para>
/// With a sliding window (Mistral) a sequence's future queries, at positions from <see cref="Sequence.ComputedTokens"/> on,
/// never read a key older than ComputedTokens - window + 1: after each step the blocks wholly before that position go
/// back to the pool (one reference dropped: a prefix block shared with another sequence stays in use, and a registered one
/// stays findable in the prefix cache) and their table entries become -1, which the attention kernels never look up. A
/// sequence then holds at most <see cref="BlocksHeld(int)"/> blocks however long it grows, and admission counts that bound.
/// </para>
/// <para>
/// With a draft model whose pool shares the block tables (<see cref="DraftModel"/>), a block goes back only once neither
/// model reads it again: the served model's next query (window <see cref="SlidingWindow"/>) and the draft model's, at
/// <see cref="Sequence.DraftModelTokens"/> (its own window; none keeps every block). The draft model follows every step's
/// tokens (<see cref="Speculation.ModelDrafter.CatchUp"/>), so it never lags the served model by more than the guesses of a
/// step, and the bound is that of the larger window (<see cref="RetainedWindow"/>). A block enters the prefix cache only
/// once both pools hold its tokens, so a sequence that takes cached blocks takes them in both pools.
/// </para>
/// </summary>
public sealed class Scheduler
{
    private readonly PagedKvCache _cache;
    private readonly List<Sequence> _running = new();
    private readonly LinkedList<Sequence> _waiting = new();

    /// <summary>
    /// A scheduler placing sequences into <paramref name="cache"/> for a model whose every attention layer slides over
    /// <paramref name="slidingWindow"/> positions (0: full causal attention, the blocks stay until the sequence ends).
    /// </summary>
    /// <remarks>With <paramref name="draftModel"/>, a draft model's pool shares the block tables (see the class remarks).</remarks>
    public Scheduler(PagedKvCache cache, SchedulerOptions options, int slidingWindow = 0, DraftModelPool? draftModel = null)
    {
        ArgumentNullException.ThrowIfNull(cache);
        Options = (options ?? throw new ArgumentNullException(nameof(options))).Validate();
        if (slidingWindow < 0) throw new ArgumentOutOfRangeException(nameof(slidingWindow), slidingWindow, "Scheduler: the sliding window must be 0 (none) or positive");
        _cache = cache;
        SlidingWindow = slidingWindow;
        DraftModel = draftModel?.Validate();
        RetainedWindow = RetainedWindowOf(slidingWindow, DraftModel);
    }

    /// <summary>The limits.</summary>
    public SchedulerOptions Options { get; }

    /// <summary>Positions each query sees (the model's sliding window), or 0 for all.</summary>
    public int SlidingWindow { get; }

    /// <summary>The draft model whose pool shares the block tables (speculative decoding with a draft model), or null.</summary>
    public DraftModelPool? DraftModel { get; }

    /// <summary>
    /// Positions behind a sequence's next one whose blocks are kept, for both models: the larger of the served model's and
    /// the draft model's windows, or 0 (every block kept) when either reads every position.
    /// </summary>
    public int RetainedWindow { get; }

    private static int RetainedWindowOf(int slidingWindow, DraftModelPool? draftModel) =>
        slidingWindow == 0 || draftModel is { SlidingWindow: 0 } ? 0 : Math.Max(slidingWindow, draftModel?.SlidingWindow ?? 0);

    /// <summary>
    /// Most positions a sequence's blocks reach past its known computed tokens: a prefill chunk of the token budget, or with
    /// a draft model the guesses reserved before a step after those of the previous step were kept (2 x lookahead + 1).
    /// </summary>
    private static int StepSpan(int tokenBudget, DraftModelPool? draftModel) =>
        draftModel is null ? tokenBudget : Math.Max(tokenBudget, 2 * draftModel.LookaheadTokens + 1);

    /// <summary>Sequences in the running batch.</summary>
    public IReadOnlyList<Sequence> Running => _running;

    /// <summary>Sequences waiting to start or to resume.</summary>
    public int WaitingCount => _waiting.Count;

    /// <summary>Preemptions so far.</summary>
    public long PreemptionCount { get; private set; }

    /// <summary>Whether nothing is running or waiting.</summary>
    public bool IsIdle => _running.Count == 0 && _waiting.Count == 0;

    /// <summary>Blocks that cover <paramref name="tokens"/> positions (a block table's logical length).</summary>
    public int BlocksFor(int tokens) => (tokens + _cache.BlockSize - 1) / _cache.BlockSize;

    /// <summary>
    /// The most blocks a sequence of up to <paramref name="tokens"/> tokens holds at once: all of them without a window; with
    /// one, at most min(that, the blocks of window - 1 + TokenBudget positions starting anywhere in a block): before a step
    /// it holds the blocks from that of position ComputedTokens - window + 1 on, and the step adds at most a budget's chunk.
    /// </summary>
    /// <remarks>With a draft model the window is <see cref="RetainedWindow"/>, and a step may reach further (its guesses).</remarks>
    public int BlocksHeld(int tokens) => BlocksHeld(tokens, _cache.BlockSize, SlidingWindow, Options.TokenBudget, DraftModel);

    /// <summary>
    /// <see cref="BlocksHeld(int, int, int, int)"/> of a model whose draft model's pool (<paramref name="draftModel"/>, or null)
    /// shares the block tables: the window is the pair's (<see cref="RetainedWindow"/>), and the positions a step reaches
    /// include the draft model's guesses.
    /// </summary>
    public static int BlocksHeld(int tokens, int blockSize, int slidingWindow, int tokenBudget, DraftModelPool? draftModel) =>
        BlocksHeld(tokens, blockSize, RetainedWindowOf(slidingWindow, draftModel), StepSpan(tokenBudget, draftModel));

    /// <summary>
    /// <see cref="BlocksHeld(int)"/> for blocks of <paramref name="blockSize"/>, a <paramref name="slidingWindow"/> (0: none)
    /// and steps of at most <paramref name="tokenBudget"/> tokens: positions from ComputedTokens - window + 1 to
    /// ComputedTokens + budget - 1, window + budget - 1 of them, touch at most (window + budget - 1 + blockSize - 1) / blockSize
    /// rounded up blocks.
    /// </summary>
    public static int BlocksHeld(int tokens, int blockSize, int slidingWindow, int tokenBudget)
    {
        int all = (tokens + blockSize - 1) / blockSize;
        if (slidingWindow == 0) return all;
        long bound = ((long)slidingWindow + tokenBudget + 2L * blockSize - 3) / blockSize;
        return (int)Math.Min(all, bound);
    }

    /// <summary>Queues <paramref name="sequence"/> behind the others.</summary>
    /// <exception cref="ArgumentException">The sequence could never fit the cache, even alone.</exception>
    public void Add(Sequence sequence)
    {
        ArgumentNullException.ThrowIfNull(sequence);
        if (BlocksHeld(sequence.MaxLength) > _cache.Blocks)
            throw new ArgumentException($"a sequence of up to {sequence.MaxLength} tokens needs {BlocksHeld(sequence.MaxLength)} KV blocks but the cache has {_cache.Blocks}; give the server more KV memory or ask for fewer tokens");
        sequence.Status = SequenceStatus.Waiting;
        _waiting.AddLast(sequence);
    }

    /// <summary>Removes <paramref name="sequence"/> wherever it is and releases its blocks at once (finished or cancelled).</summary>
    public void Finish(Sequence sequence)
    {
        if (sequence.Status == SequenceStatus.Finished) return;
        if (sequence.Status == SequenceStatus.Running) _running.Remove(sequence);
        else _waiting.Remove(sequence);
        ReleaseBlocks(sequence);
        sequence.Status = SequenceStatus.Finished;
    }

    /// <summary>
    /// Plans the next step (empty when nothing can run): first the decode token of every running sequence that has one
    /// token to compute, in arrival order; then, within what is left of the step's limit (<see cref="SchedulerOptions.TokenBudget"/>,
    /// or <see cref="SchedulerOptions.EffectiveDecodingStepTokens"/> once a sequence decodes), the prefill chunks of running
    /// sequences in arrival order, then waiting sequences, first come first served.
    /// </summary>
    public ScheduledStep Schedule()
    {
        var step = new ScheduledStep();
        var scheduled = new HashSet<Sequence>();
        int used = 0;

        // Decode tokens first: a prompt chunk of an earlier arrival must not push a decoding sequence out of the step.
        for (int i = 0; i < _running.Count && used < Options.TokenBudget; i++)
        {
            var sequence = _running[i];
            if (sequence.PendingTokens - sequence.Drafts != 1 || sequence.IsFull) continue;    // full: its last token ends it (asynchronous scheduling)
            if (!Place(sequence, 1, step, scheduled)) break;          // no block for it, even after preempting: stop here
            used++;
        }

        // Prefill chunks fill what the decodes leave of a short step (or the whole budget when nothing decodes).
        int limit = used > 0 ? Math.Min(Options.EffectiveDecodingStepTokens, Options.TokenBudget) : Options.TokenBudget;
        used += PlaceDrafts(step, limit - used, scheduled);
        for (int i = 0; i < _running.Count && used < limit; i++)
        {
            var sequence = _running[i];
            if (sequence.PendingTokens <= 1 || scheduled.Contains(sequence)) continue;
            int count = Math.Min(sequence.PendingTokens, limit - used);
            if (!Place(sequence, count, step, scheduled)) break;
            used += count;
        }

        // New work joins only when nothing had to give way this step (otherwise it would take the blocks just freed).
        while (step.Preempted.Count == 0 && used < limit && _running.Count < Options.MaxBatch && _waiting.First is { } node)
        {
            var sequence = node.Value;
            if (sequence.BlockTable.Count == 0) TakeCachedPrefix(sequence);
            int count = Math.Min(sequence.PendingTokens, limit - used);
            if (!TryReserve(sequence, sequence.ComputedTokens + count))
            {
                ReleaseBlocks(sequence);                             // keep FCFS: nobody overtakes the head of the queue
                break;
            }
            _waiting.RemoveFirst();
            sequence.Status = SequenceStatus.Running;
            _running.Add(sequence);
            step.Sequences.Add(new ScheduledSequence(sequence, sequence.ComputedTokens, count));
            used += count;
        }
        step.Tokens = used;
        return step;
    }

    /// <summary>
    /// Speculative decoding: widens the decode entries of sequences that carry drafts to verify them too, in batch order,
    /// within <paramref name="room"/> tokens of the step and the blocks that are free (drafts never preempt anyone); a
    /// sequence gets fewer drafts, or none, where those run out. Drafts of running sequences that do not decode in this
    /// step (not in <paramref name="scheduled"/>) are dropped. Returns the draft tokens placed.
    /// </summary>
    private int PlaceDrafts(ScheduledStep step, int room, HashSet<Sequence> scheduled)
    {
        int placed = 0;
        for (int i = 0; i < step.Sequences.Count; i++)
        {
            var (sequence, start, count) = step.Sequences[i];
            if (sequence.Drafts == 0) continue;
            int drafts = Math.Min(sequence.Drafts, room - placed);
            while (drafts > 0 && !TryReserve(sequence, start + 1 + drafts)) drafts--;
            sequence.TrimDrafts(drafts);
            // Rebuilt even without drafts: the entry was made while the drafts were in the tokens, so it did not sample.
            step.Sequences[i] = new ScheduledSequence(sequence, start, count + drafts) { Drafts = drafts };
            placed += drafts;
        }
        foreach (var sequence in _running)
            if (sequence.Drafts > 0 && !scheduled.Contains(sequence)) sequence.TrimDrafts(0);
        return placed;
    }

    /// <summary>
    /// Speculative decoding, after the step that verified <paramref name="sequence"/>'s drafts: the first
    /// <paramref name="accepted"/> become its tokens (their keys and values are in the cache already), the others are
    /// dropped (<see cref="Sequence.ResolveDrafts"/>), and blocks that this completes enter the prefix cache.
    /// </summary>
    public void ResolveDrafts(Sequence sequence, int accepted)
    {
        ArgumentNullException.ThrowIfNull(sequence);
        sequence.ResolveDrafts(accepted);
        if (sequence.Status == SequenceStatus.Running) RegisterFullBlocks(sequence);
    }

    /// <summary>
    /// Schedules <paramref name="count"/> tokens of running <paramref name="sequence"/>, preempting the latest arrivals
    /// that this step has not scheduled until its blocks fit. False when even that is not enough: then the sequence itself
    /// is preempted.
    /// </summary>
    private bool Place(Sequence sequence, int count, ScheduledStep step, HashSet<Sequence> scheduled)
    {
        while (!TryReserve(sequence, sequence.ComputedTokens + count))
        {
            var victim = _running[^1];
            if (victim == sequence || scheduled.Contains(victim))
            {
                Preempt(sequence, step);
                return false;
            }
            Preempt(victim, step);
        }
        scheduled.Add(sequence);
        step.Sequences.Add(new ScheduledSequence(sequence, sequence.ComputedTokens, count));
        return true;
    }

    /// <summary>
    /// Records that <paramref name="step"/> ran: each sequence's computed tokens advance, its newly full blocks enter the
    /// prefix cache, and with a sliding window the blocks left of every future query's window are released. The caller
    /// then appends sampled tokens to the sequences that sampled.
    /// </summary>
    public void Complete(ScheduledStep step)
    {
        foreach (var (sequence, start, count) in step.Sequences)
        {
            if (sequence.Status != SequenceStatus.Running || sequence.ComputedTokens != start) continue;   // finished meanwhile
            sequence.ComputedTokens = start + count;
            RegisterFullBlocks(sequence);
            ReleaseLeftOfWindow(sequence);
        }
    }

    /// <summary>
    /// Blocks of a sequence that no future query reads: those wholly before position ComputedTokens - window + 1, the
    /// oldest key in the window of the next position (none without a window), counting verified tokens only. With a draft
    /// model, also before the oldest key of the draft model's next position, min(DraftModelTokens, KnownTokens) - its
    /// window + 1 (a dropped guess is computed again from there at the earliest).
    /// </summary>
    private int DeadBlocks(Sequence sequence)
    {
        if (RetainedWindow == 0) return 0;
        int oldest = sequence.ComputedTokens - sequence.Drafts - SlidingWindow + 1;
        if (DraftModel is { } draft)
            oldest = Math.Min(oldest, Math.Min(sequence.DraftModelTokens, sequence.KnownTokens) - draft.SlidingWindow + 1);
        return Math.Min(sequence.BlockTable.Count, Math.Max(0, oldest) / _cache.BlockSize);
    }

    /// <summary>Drops the sequence's references to its dead blocks (<see cref="DeadBlocks"/>), leaving -1 in their table entries.</summary>
    private void ReleaseLeftOfWindow(Sequence sequence)
    {
        int dead = DeadBlocks(sequence);
        for (int b = sequence.ReleasedBlocks; b < dead; b++)
        {
            if (sequence.BlockTable[b] >= 0) _cache.Allocator.Release(sequence.BlockTable[b]);
            sequence.BlockTable[b] = -1;
        }
        sequence.ReleasedBlocks = Math.Max(sequence.ReleasedBlocks, dead);
    }

    /// <summary>
    /// Asynchronous scheduling: gives <paramref name="sequence"/>'s oldest unresolved token its sampled value
    /// (<see cref="Sequence.Resolve"/>); blocks that this completes enter the prefix cache (a block is hashed only once all
    /// its tokens are known).
    /// </summary>
    public void Resolve(Sequence sequence, int token)
    {
        ArgumentNullException.ThrowIfNull(sequence);
        sequence.Resolve(token);
        if (sequence.Status == SequenceStatus.Running) RegisterFullBlocks(sequence);
    }

    private void RegisterFullBlocks(Sequence sequence)
    {
        if (!_cache.Options.PrefixCaching) return;
        int full = Math.Min(sequence.ComputedTokens, sequence.KnownTokens) / _cache.BlockSize;   // never a block of unverified drafts
        if (DraftModel is not null) full = Math.Min(full, sequence.DraftModelTokens / _cache.BlockSize);   // nor one the draft pool lacks
        for (int b = sequence.RegisteredBlocks; b < full; b++)
            if (sequence.BlockTable[b] >= 0)   // a block left of the window is already back in the pool
                _cache.Allocator.Register(sequence.BlockTable[b], sequence.BlockHash(b, _cache.BlockSize));
        sequence.RegisteredBlocks = Math.Max(sequence.RegisteredBlocks, full);
    }

    /// <summary>Makes the sequence's block table cover <paramref name="tokens"/> positions; on failure takes nothing new.</summary>
    private bool TryReserve(Sequence sequence, int tokens)
    {
        int needed = BlocksFor(tokens) - sequence.BlockTable.Count;
        if (needed <= 0) return true;
        if (needed > _cache.Allocator.FreeCount) return false;
        for (int i = 0; i < needed; i++)
        {
            _cache.Allocator.TryAllocate(out int block);
            sequence.BlockTable.Add(block);
        }
        return true;
    }

    /// <summary>
    /// Shares the cached blocks of the longest computed prefix of the sequence's tokens, leaving at least its last token to
    /// compute. With a sliding window the prefix's blocks left of the window of its first uncomputed position are only
    /// checked to be cached (their hashes chain the prefix), not taken: their entries are -1 from the start. With a draft
    /// model the window is the pair's, and the draft pool holds the prefix too (a block is registered only once it does).
    /// </summary>
    private void TakeCachedPrefix(Sequence sequence)
    {
        if (!_cache.Options.PrefixCaching) return;
        int bs = _cache.BlockSize, reusable = (sequence.Tokens.Count - 1) / bs, found = 0;
        while (found < reusable && _cache.Allocator.IsCached(sequence.BlockHash(found, bs))) found++;
        int dead = RetainedWindow == 0 ? 0 : Math.Max(0, found * bs - RetainedWindow + 1) / bs;
        for (int b = 0; b < found; b++)
            sequence.BlockTable.Add(b < dead ? -1 : _cache.Allocator.Reuse(sequence.BlockHash(b, bs)));
        sequence.ReleasedBlocks = dead;
        sequence.ComputedTokens = sequence.BlockTable.Count * bs;
        if (DraftModel is not null) sequence.DraftModelTokens = sequence.ComputedTokens;
        sequence.RegisteredBlocks = sequence.BlockTable.Count;
        sequence.CachedPromptTokens = Math.Max(sequence.CachedPromptTokens, Math.Min(sequence.ComputedTokens, sequence.PromptLength));
    }

    private void Preempt(Sequence sequence, ScheduledStep step)
    {
        _running.Remove(sequence);
        sequence.TrimDrafts(0);
        ReleaseBlocks(sequence);
        sequence.Status = SequenceStatus.Waiting;
        sequence.Preemptions++;
        PreemptionCount++;
        // Back to the queue in arrival order: ahead of every later arrival.
        var node = _waiting.First;
        while (node is not null && node.Value.Id < sequence.Id) node = node.Next;
        if (node is null) _waiting.AddLast(sequence); else _waiting.AddBefore(node, sequence);
        step.Preempted.Add(sequence);
    }

    /// <summary>
    /// Speculative decoding with a draft model: makes the block table of running <paramref name="sequence"/> cover
    /// <paramref name="tokens"/> positions before the step is scheduled (the draft model writes its guesses' keys there),
    /// without preempting anyone. False when the free blocks do not suffice (nothing is taken).
    /// </summary>
    public bool TryReserveAhead(Sequence sequence, int tokens)
    {
        ArgumentNullException.ThrowIfNull(sequence);
        if (sequence.Status != SequenceStatus.Running) throw new InvalidOperationException($"Scheduler.TryReserveAhead: sequence {sequence.Id} is not running");
        if (tokens > sequence.MaxLength) throw new ArgumentOutOfRangeException(nameof(tokens), tokens, $"Scheduler.TryReserveAhead: sequence {sequence.Id} holds at most {sequence.MaxLength} tokens");
        return TryReserve(sequence, tokens);
    }

    private void ReleaseBlocks(Sequence sequence)
    {
        foreach (var block in sequence.BlockTable)
            if (block >= 0) _cache.Allocator.Release(block);          // -1: released already, left of the window
        sequence.BlockTable.Clear();
        sequence.ComputedTokens = 0;
        sequence.DraftModelTokens = 0;
        sequence.RegisteredBlocks = 0;
        sequence.ReleasedBlocks = 0;
    }
}
