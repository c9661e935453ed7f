using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Inference.Scheduling;

/// <summary>The scheduler's decisions, on a tiny cache (the pool's contents are never read here).</summary>
public class SchedulerTests
{
    private readonly CpuBackend _cpu = new(1);

    private PagedKvCache Cache(int blocks, int blockSize = 4, bool prefixCaching = true) =>
        new(_cpu, DType.F32, 1, 1, 2, new PagedKvCacheOptions
        {
            BlockSize = blockSize, MemoryBytes = PagedKvCache.BlockBytes(DType.F32, 1, 1, 2, blockSize) * blocks, PrefixCaching = prefixCaching,
        });

    private static Sequence Seq(long id, int promptLength, int maxLength, int firstToken = 1) =>
        new(id, Enumerable.Range(firstToken, promptLength).ToArray(), maxLength);

    /// <summary>Runs a step and appends token 0 to every sequence that sampled.</summary>
    private static ScheduledStep Step(Scheduler scheduler)
    {
        var step = scheduler.Schedule();
        scheduler.Complete(step);
        foreach (var s in step.Sequences) if (s.Samples && s.Sequence.Tokens.Count < s.Sequence.MaxLength) s.Sequence.Append(0);
        return step;
    }

    [Fact]
    public void LongPromptIsPrefilledInChunksWhileRunningSequencesKeepDecoding()
    {
        using var cache = Cache(32);
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 4, TokenBudget = 8 });
        var a = Seq(1, 3, 20);
        scheduler.Add(a);
        Step(scheduler);                                              // a: prompt of 3
        var b = Seq(2, 20, 30);
        scheduler.Add(b);
        var step = Step(scheduler);
        Assert.Equal([(a, 1), (b, 7)], step.Sequences.Select(s => (s.Sequence, s.Count)));   // a decodes, b gets the rest of the budget
        step = Step(scheduler);
        Assert.Equal([(a, 1), (b, 7)], step.Sequences.Select(s => (s.Sequence, s.Count)));
        step = Step(scheduler);
        Assert.Equal([(a, 1), (b, 6)], step.Sequences.Select(s => (s.Sequence, s.Count)));
        Assert.True(step.Sequences[1].Samples);                       // b's last prompt chunk gives its first token
        Assert.True(Step(scheduler).IsDecodeOnly);
    }

    [Fact]
    public void WhenBlocksRunOutTheLatestArrivalIsPreemptedAndLaterRecomputedWithItsTokens()
    {
        using var cache = Cache(4);                                  // 16 positions in all
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 4, TokenBudget = 16 });
        var first = Seq(1, 7, 14);
        var second = Seq(2, 7, 14, firstToken: 50);
        scheduler.Add(first);
        scheduler.Add(second);
        Step(scheduler);                                              // both prefilled: 2 blocks each, all 4 taken
        Step(scheduler);                                              // position 7 still fits the second blocks
        Assert.Equal(0, second.Preemptions);
        Step(scheduler);                                              // position 8 needs a third block for each: second gives way
        Assert.Equal(1, second.Preemptions);
        Assert.Equal(SequenceStatus.Waiting, second.Status);
        Assert.Empty(second.BlockTable);
        Assert.Equal(0, second.ComputedTokens);
        Assert.Equal(9, second.Tokens.Count);                         // what it generated is kept for the recompute
        while (first.Tokens.Count < first.MaxLength) Step(scheduler);
        scheduler.Finish(first);
        var step = Step(scheduler);
        Assert.Equal(second, step.Sequences.Single().Sequence);
        Assert.Equal(9, step.Sequences.Single().Count);              // all 9 tokens recomputed (first's cached blocks hold other tokens)
        Assert.True(step.Sequences.Single().Samples);
    }

    [Fact]
    public void IdenticalPromptPrefixSharesFullBlocksAndLeavesTheLastTokenToCompute()
    {
        using var cache = Cache(16);
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 4, TokenBudget = 64 });
        var a = Seq(1, 9, 12);
        scheduler.Add(a);
        Step(scheduler);
        var b = Seq(2, 9, 12);                                        // the same 9 prompt tokens
        scheduler.Add(b);
        var step = Step(scheduler);
        var scheduledB = step.Sequences.Single(s => s.Sequence == b);
        Assert.Equal(8, scheduledB.Start);                            // two full blocks of 4 reused
        Assert.Equal(1, scheduledB.Count);
        Assert.Equal(a.BlockTable.Take(2), b.BlockTable.Take(2));
        Assert.Equal(2, cache.Allocator.References(a.BlockTable[0]));
        Assert.Equal(8, b.CachedPromptTokens);
    }

    [Fact]
    public void FinishingReleasesEveryBlockAtOnce()
    {
        using var cache = Cache(8);
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 2, TokenBudget = 8 });
        var a = Seq(1, 6, 20);
        var waiting = Seq(2, 3, 20);
        scheduler.Add(a);
        Step(scheduler);
        scheduler.Add(waiting);
        Assert.True(cache.Allocator.InUse > 0);
        scheduler.Finish(a);
        scheduler.Finish(waiting);
        Assert.Equal(0, cache.Allocator.InUse);
        Assert.True(scheduler.IsIdle);
    }

    [Fact]
    public void SequenceThatCouldNeverFitTheCacheIsRefusedNamingTheBlocks()
    {
        using var cache = Cache(2);
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 2, TokenBudget = 8 });
        var e = Assert.Throws<ArgumentException>(() => scheduler.Add(Seq(1, 4, 12)));
        Assert.Contains("needs 3 KV blocks but the cache has 2", e.Message);
    }

    /// <summary>
    /// With a window of 6, blocks of 4 and a budget of 4, a sequence holds at most (6 + 4 + 8 - 3) / 4 = 3 blocks: one of 40
    /// tokens (10 blocks unbounded) is admitted into a pool of 3, decodes to its end there with -1 entries left behind, and
    /// finishing releases only the blocks it still holds.
    /// </summary>
    [Fact]
    public void AWindowedSequenceIsAdmittedByItsBoundAndDecodesToItsEndInThatManyBlocks()
    {
        using var cache = Cache(3);
        var unbounded = new Scheduler(cache, new SchedulerOptions { MaxBatch = 2, TokenBudget = 4 });
        Assert.Contains("needs 10 KV blocks but the cache has 3", Assert.Throws<ArgumentException>(() => unbounded.Add(Seq(1, 4, 40))).Message);
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 2, TokenBudget = 4 }, slidingWindow: 6);
        Assert.Equal(3, scheduler.BlocksHeld(40));
        var a = Seq(1, 9, 40);
        scheduler.Add(a);
        while (a.ComputedTokens < 39)
        {
            var step = Step(scheduler);
            Assert.Equal([a], step.Sequences.Select(s => s.Sequence));
            Assert.InRange(a.HeldBlocks, 1, 3);
            Assert.Equal(a.HeldBlocks, cache.Allocator.InUse);
            // Every entry left of the window of the next position is released; every one inside is held.
            int firstLive = Math.Max(0, a.ComputedTokens - 6 + 1) / 4;
            Assert.All(a.BlockTable.Take(firstLive), block => Assert.Equal(-1, block));
            Assert.All(a.BlockTable.Skip(firstLive), block => Assert.True(block >= 0));
        }
        Assert.Equal(10, a.BlockTable.Count);
        scheduler.Finish(a);                                           // releases the held blocks, skips the -1 entries
        Assert.Equal(0, cache.Allocator.InUse);
        Assert.Empty(a.BlockTable);
    }

    [Fact]
    public void HeadOfTheQueueIsNotOvertakenWhenItDoesNotFit()
    {
        using var cache = Cache(4);
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 4, TokenBudget = 64 });
        var running = Seq(1, 8, 16);
        scheduler.Add(running);
        Step(scheduler);                                              // 2 blocks (+1 at the next decode)
        var big = Seq(2, 12, 16, firstToken: 100);                  // no prefix shared with the running one
        var small = Seq(3, 2, 4);
        scheduler.Add(big);
        scheduler.Add(small);
        var step = Step(scheduler);
        Assert.Equal([running], step.Sequences.Select(s => s.Sequence));   // big needs 3 blocks, 1 is free: small waits behind it
        Assert.Equal(2, scheduler.WaitingCount);
    }

    /// <summary>
    /// Stall-free chunked prefill: while sequences decode, a step holds at most DecodingStepTokens tokens (their decodes
    /// first, then prefill chunks); a step without decodes prefills at the full TokenBudget.
    /// </summary>
    [Fact]
    public void StepsWithDecodesStayWithinDecodingStepTokensAndDecodesComeFirst()
    {
        using var cache = Cache(64);
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 4, TokenBudget = 32, DecodingStepTokens = 8 });
        var a = Seq(1, 40, 60);                                       // a long prompt: chunks of the full budget while nothing decodes
        scheduler.Add(a);
        var step = Step(scheduler);
        Assert.Equal([(a, 32)], step.Sequences.Select(s => (s.Sequence, s.Count)));
        var b = Seq(2, 3, 20, firstToken: 100);
        scheduler.Add(b);
        step = Step(scheduler);                                       // nothing decodes yet: a's last 8 and b's 3 within 32
        Assert.Equal([(a, 8), (b, 3)], step.Sequences.Select(s => (s.Sequence, s.Count)));
        var c = Seq(3, 30, 40, firstToken: 200);
        scheduler.Add(c);
        step = Step(scheduler);                                       // a and b decode: c's prompt gets 8 - 2 tokens
        Assert.Equal([(a, 1), (b, 1), (c, 6)], step.Sequences.Select(s => (s.Sequence, s.Count)));
        Assert.Equal(8, step.Tokens);
        var d = Seq(4, 5, 20, firstToken: 300);
        scheduler.Add(d);
        step = Step(scheduler);                                       // c (earlier arrival, running) is chunked before d joins
        Assert.Equal([(a, 1), (b, 1), (c, 6)], step.Sequences.Select(s => (s.Sequence, s.Count)));
        while (c.PendingTokens > 1) Step(scheduler);
        step = Step(scheduler);                                       // c's last prompt token rides with the decodes; d joins
        Assert.Equal([(a, 1), (b, 1), (c, 1), (d, 5)], step.Sequences.Select(s => (s.Sequence, s.Count)));
    }

    [Fact]
    public void DecodingStepTokensIsTakenWithinMaxBatchAndTheBudgetAndMustBePositive()
    {
        Assert.Equal(8, new SchedulerOptions { MaxBatch = 4, TokenBudget = 8 }.EffectiveDecodingStepTokens);       // 512 by default, cut to the budget
        Assert.Equal(64, new SchedulerOptions { MaxBatch = 64, TokenBudget = 2048, DecodingStepTokens = 16 }.EffectiveDecodingStepTokens);
        var e = Assert.Throws<ArgumentException>(() => new SchedulerOptions { DecodingStepTokens = 0 }.Validate());
        Assert.Contains("DecodingStepTokens (0) must be positive", e.Message);
    }

    /// <summary>
    /// Asynchronous scheduling: a sampled token appended unresolved is computed by the next step (its position's block is
    /// reserved as for a known token), but the block holding it enters the prefix cache only once the token is resolved,
    /// and a sequence whose unresolved token fills it to its maximum length is not scheduled again.
    /// </summary>
    [Fact]
    public void UnresolvedTokensAreComputedButHashedOnlyOnceResolvedAndAFullSequenceIsNotScheduled()
    {
        using var cache = Cache(8);
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 2, TokenBudget = 16 });
        var a = Seq(1, 3, 5);                                         // prompt of 3, two new tokens, blocks of 4
        scheduler.Add(a);
        var step = scheduler.Schedule();
        scheduler.Complete(step);
        a.AppendUnresolved(0);                                        // token 3, sampled on the device
        Assert.Equal(1, a.Unresolved);
        Assert.Equal(-1, a.Tokens[3]);
        step = scheduler.Schedule();                                  // computes token 3 before the host knows it
        Assert.Equal([(a, 3, 1)], step.Sequences.Select(s => (s.Sequence, s.Start, s.Count)));
        scheduler.Complete(step);
        a.AppendUnresolved(0);                                        // token 4: the sequence is full
        Assert.Equal(0, cache.Allocator.CachedCount);                 // block 0 (tokens 0-3) holds an unresolved token
        scheduler.Resolve(a, 42);
        Assert.Equal(42, a.Tokens[3]);
        Assert.Equal(1, cache.Allocator.CachedCount);                 // now hashed and shared
        Assert.True(scheduler.Schedule().IsEmpty);                    // full: its last token is never computed
        Assert.Throws<ArgumentOutOfRangeException>(() => a.Append(-3));
        Assert.Throws<InvalidOperationException>(() => a.Append(7));   // behind an unresolved token
        scheduler.Resolve(a, 43);
        Assert.Throws<InvalidOperationException>(() => scheduler.Resolve(a, 44));
        scheduler.Finish(a);
        Assert.Equal(0, cache.Allocator.InUse);
    }
}
