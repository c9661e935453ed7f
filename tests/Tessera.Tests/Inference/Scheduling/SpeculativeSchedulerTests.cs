using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Inference.Scheduling;

/// <summary>Draft tokens in the scheduler: placed with the decode token, within the step and the free blocks, verified,
/// and never registered in the prefix cache before they are verified (the pool's contents are never read here).</summary>
public class SpeculativeSchedulerTests
{
    private readonly CpuBackend _cpu = new(1);

    private PagedKvCache Cache(int blocks, int blockSize = 4) =>
        new(_cpu, DType.F32, 1, 1, 2, new PagedKvCacheOptions { BlockSize = blockSize, MemoryBytes = PagedKvCache.BlockBytes(DType.F32, 1, 1, 2, blockSize) * blocks });

    private static Sequence Seq(long id, int promptLength, int maxLength, int firstToken = 1, int maxDrafts = 4) =>
        new(id, Enumerable.Range(firstToken, promptLength).ToArray(), maxLength) { MaxDrafts = maxDrafts };

    /// <summary>Prefills <paramref name="sequence"/> alone and appends its first token, so it decodes next.</summary>
    private static void Prefill(Scheduler scheduler, Sequence sequence, int token = 0)
    {
        var step = scheduler.Schedule();
        scheduler.Complete(step);
        Assert.True(step.Sequences.Single(s => s.Sequence == sequence).Samples);
        sequence.Append(token);
    }

    /// <summary>Adds <paramref name="sequences"/>, prefills them in one step and appends token 0 to each, so they decode next.</summary>
    private static void PrefillTogether(Scheduler scheduler, params Sequence[] sequences)
    {
        foreach (var sequence in sequences) scheduler.Add(sequence);
        var step = scheduler.Schedule();
        scheduler.Complete(step);
        foreach (var sequence in sequences) sequence.Append(0);
    }

    [Fact]
    public void DraftsAreVerifiedWithTheDecodeTokenAndSampledAtEachRow()
    {
        using var cache = Cache(16);
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 4, TokenBudget = 16 });
        var a = Seq(1, 5, 20);
        scheduler.Add(a);
        Prefill(scheduler, a, token: 70);
        a.AppendDrafts([71, 72, 73]);
        var step = scheduler.Schedule();
        var s = step.Sequences.Single();
        Assert.Equal((5, 4, 3, 4), (s.Start, s.Count, s.Drafts, s.SampledRows));   // token 70 at 5, the drafts at 6..8
        Assert.False(step.IsDecodeOnly);                              // four rows of one sequence: not a graph-replayed decode
        Assert.Equal(4, step.Tokens);
        scheduler.Complete(step);
        scheduler.ResolveDrafts(a, 2);                               // the model agreed with 71 and 72, not 73
        Assert.Equal([1, 2, 3, 4, 5, 70, 71, 72], a.Tokens);
        Assert.Equal((8, 0), (a.ComputedTokens, a.Drafts));           // 70, 71, 72 have their keys and values; 73's are stale
        a.Append(80);                                                // the model's token after 72
        Assert.Equal(1, a.PendingTokens);
    }

    [Fact]
    public void DraftsGetWhatTheStepAndTheBlocksLeaveAndNeverPreemptAnyone()
    {
        // Budget 6 with two decoders: 4 tokens of room for drafts. a's 3 fit; b gets the one left (and in the next step,
        // where a takes all 4, none: b still decodes and samples).
        using var cache = Cache(16);
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 4, TokenBudget = 6 });
        var a = Seq(1, 3, 30);
        var b = Seq(2, 3, 30, firstToken: 40);
        PrefillTogether(scheduler, a, b);
        a.AppendDrafts([5, 6, 7]);
        b.AppendDrafts([8, 9, 10]);
        var step = scheduler.Schedule();
        Assert.Equal([(a, 3), (b, 1)], step.Sequences.Select(s => (s.Sequence, s.Drafts)));
        Assert.Equal(6, step.Tokens);
        Assert.Equal([40, 41, 42, 0, 8], b.Tokens);                   // b's unplaced drafts are gone
        scheduler.Complete(step);
        scheduler.ResolveDrafts(a, 0);
        scheduler.ResolveDrafts(b, 0);
        a.Append(1);
        b.Append(1);
        a.AppendDrafts([5, 6, 7, 8]);
        b.AppendDrafts([9]);
        step = scheduler.Schedule();
        Assert.Equal([(a, 4, 5), (b, 0, 1)], step.Sequences.Select(s => (s.Sequence, s.Drafts, s.SampledRows)));
        Assert.Equal((0, 5), (b.Drafts, b.Tokens.Count));

        // A pool of 3 blocks: c and d hold one each after their prompts, so c's five drafts (positions 4..8, two more
        // blocks) get only the four that the one free block holds.
        using var small = Cache(3);
        var tight = new Scheduler(small, new SchedulerOptions { MaxBatch = 4, TokenBudget = 16 });
        var c = Seq(3, 3, 12);
        var d = Seq(4, 3, 12, firstToken: 60);
        PrefillTogether(tight, c, d);
        c.AppendDrafts([1, 2, 3, 4, 5]);
        var squeezed = tight.Schedule();
        Assert.Equal([(c, 4), (d, 0)], squeezed.Sequences.Select(s => (s.Sequence, s.Drafts)));
        Assert.Equal([1, 2, 3, 0, 1, 2, 3, 4], c.Tokens);
        Assert.Empty(squeezed.Preempted);
        Assert.Equal(SequenceStatus.Running, d.Status);
    }

    [Fact]
    public void UnverifiedDraftsNeverEnterThePrefixCache()
    {
        using var cache = Cache(16);
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 4, TokenBudget = 16 });
        var a = Seq(1, 6, 20);                                       // prompt 1..6: block 0 = [1..4], block 1 = [5, 6, ...]
        scheduler.Add(a);
        Prefill(scheduler, a, token: 7);
        a.AppendDrafts([8, 9]);                                      // block 1 would be [5, 6, 7, 8] with draft 8 in it
        var step = scheduler.Schedule();
        scheduler.Complete(step);
        Assert.Equal(9, a.ComputedTokens);
        var block0 = PrefixHash.Of(UInt128.Zero, [1, 2, 3, 4]);
        Assert.True(cache.Allocator.IsCached(block0));
        Assert.False(cache.Allocator.IsCached(PrefixHash.Of(block0, [5, 6, 7, 8])));   // computed, but 8 is not verified
        scheduler.ResolveDrafts(a, 0);                               // the model said otherwise
        a.Append(50);
        Assert.False(cache.Allocator.IsCached(PrefixHash.Of(block0, [5, 6, 7, 8])));
        // The sequence's real block 1 is registered once its tokens are known and computed.
        var next = scheduler.Schedule();
        scheduler.Complete(next);
        Assert.True(cache.Allocator.IsCached(PrefixHash.Of(block0, [5, 6, 7, 50])));
    }

    [Fact]
    public void APreemptedSequenceDropsItsDraftsAndKeepsItsTokens()
    {
        using var cache = Cache(4);                                  // 16 positions
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 4, TokenBudget = 16 });
        var first = Seq(1, 7, 14, maxDrafts: 0);
        var second = Seq(2, 7, 14, firstToken: 50);
        PrefillTogether(scheduler, first, second);                  // 2 blocks each: the pool is full
        var decode = scheduler.Schedule();                           // position 7 still fits
        scheduler.Complete(decode);
        first.Append(0);
        second.Append(0);
        second.AppendDrafts([1, 2]);
        var step = scheduler.Schedule();                             // first's position 8 needs a block: second gives way
        Assert.Equal([second], step.Preempted);
        Assert.Equal(0, second.Drafts);
        Assert.Equal(9, second.Tokens.Count);                         // 7 prompt tokens and 2 generated, no drafts
        Assert.Equal((0, 0), (second.ComputedTokens, second.HeldBlocks));
    }

    [Fact]
    public void DraftsMustLeaveRoomForTheTokenSampledAfterThem()
    {
        var a = new Sequence(1, [1, 2, 3], 6) { MaxDrafts = 4 };
        Assert.Contains("leave no room", Assert.Throws<ArgumentException>(() => a.AppendDrafts([4, 5, 6])).Message);
        a.AppendDrafts([4, 5]);                                      // positions 3, 4; the token after them takes 5
        Assert.Throws<InvalidOperationException>(() => a.Append(9));   // drafts first
        Assert.Throws<InvalidOperationException>(() => a.AppendDrafts([6]));
        a.ResolveDrafts(2);
        a.Append(9);
        Assert.True(a.IsFull);
    }
}
