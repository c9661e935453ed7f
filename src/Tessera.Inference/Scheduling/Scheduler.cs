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
/// </summary>
public sealed class Scheduler
{
    private readonly PagedKvCache _cache;
    private readonly List<Sequence> _running = new();
    private readonly LinkedList<Sequence> _waiting = new();

    /// <summary>A scheduler placing sequences into <paramref name="cache"/>.</summary>
    public Scheduler(PagedKvCache cache, SchedulerOptions options)
    {
        ArgumentNullException.ThrowIfNull(cache);
        Options = (options ?? throw new ArgumentNullException(nameof(options))).Validate();
        _cache = cache;
    }

    /// <summary>The limits.</summary>
    public SchedulerOptions Options { get; }

    /// <summary>Sequences in the running batch.</summary>
    public IReadOnlyList<Sequence> Running => _running;

    /// <summary>Sequences waiting to start or to resume.</summary>
    public int WaitingCount => _waiting.Count;

    /// <summary>Preemptions so far.</summary>
    public long PreemptionCount { get; private set; }

    /// <summary>Whether nothing is running or waiting.</summary>
    public bool IsIdle => _running.Count == 0 && _waiting.Count == 0;

    /// <summary>Blocks a sequence of <paramref name="tokens"/> tokens needs.</summary>
    public int BlocksFor(int tokens) => (tokens + _cache.BlockSize - 1) / _cache.BlockSize;

    /// <summary>Queues <paramref name="sequence"/> behind the others.</summary>
    /// <exception cref="ArgumentException">The sequence could never fit the cache, even alone.</exception>
    public void Add(Sequence sequence)
    {
        ArgumentNullException.ThrowIfNull(sequence);
        if (BlocksFor(sequence.MaxLength) > _cache.Blocks)
            throw new ArgumentException($"a sequence of up to {sequence.MaxLength} tokens needs {BlocksFor(sequence.MaxLength)} KV blocks but the cache has {_cache.Blocks}; give the server more KV memory or ask for fewer tokens");
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
            if (sequence.PendingTokens != 1 || sequence.IsFull) continue;    // full: its last token ends it (asynchronous scheduling)
            if (!Place(sequence, 1, step, scheduled)) break;          // no block for it, even after preempting: stop here
            used++;
        }

        // Prefill chunks fill what the decodes leave of a short step (or the whole budget when nothing decodes).
        int limit = used > 0 ? Math.Min(Options.EffectiveDecodingStepTokens, Options.TokenBudget) : Options.TokenBudget;
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
    /// Records that <paramref name="step"/> ran: each sequence's computed tokens advance, and its newly full blocks enter the
    /// prefix cache. The caller then appends sampled tokens to the sequences that sampled.
    /// </summary>
    public void Complete(ScheduledStep step)
    {
        foreach (var (sequence, start, count) in step.Sequences)
        {
            if (sequence.Status != SequenceStatus.Running || sequence.ComputedTokens != start) continue;   // finished meanwhile
            sequence.ComputedTokens = start + count;
            RegisterFullBlocks(sequence);
        }
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
        int full = Math.Min(sequence.ComputedTokens, sequence.Tokens.Count - sequence.Unresolved) / _cache.BlockSize;
        for (int b = sequence.RegisteredBlocks; b < full; b++)
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

    /// <summary>Shares the cached blocks of the longest computed prefix of the sequence's tokens, leaving at least its last token to compute.</summary>
    private void TakeCachedPrefix(Sequence sequence)
    {
        if (!_cache.Options.PrefixCaching) return;
        int bs = _cache.BlockSize, reusable = (sequence.Tokens.Count - 1) / bs;
        for (int b = 0; b < reusable; b++)
        {
            int block = _cache.Allocator.Reuse(sequence.BlockHash(b, bs));
            if (block < 0) break;
            sequence.BlockTable.Add(block);
        }
        sequence.ComputedTokens = sequence.BlockTable.Count * bs;
        sequence.RegisteredBlocks = sequence.BlockTable.Count;
        sequence.CachedPromptTokens = Math.Max(sequence.CachedPromptTokens, Math.Min(sequence.ComputedTokens, sequence.PromptLength));
    }

    private void Preempt(Sequence sequence, ScheduledStep step)
    {
        _running.Remove(sequence);
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

    private void ReleaseBlocks(Sequence sequence)
    {
        foreach (var block in sequence.BlockTable) _cache.Allocator.Release(block);
        sequence.BlockTable.Clear();
        sequence.ComputedTokens = 0;
        sequence.RegisteredBlocks = 0;
    }
}
