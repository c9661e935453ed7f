using Tessera.Inference;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Models;
using Tessera.Models.Tokenization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Inference.Paging;

/// <summary>
/// The KV cache bounded by a sliding window (issue 15) on the CPU, with a tiny Mistral-style model (window 12, blocks of 4,
/// sequences of 60-80 positions: 5-6.7 windows): blocks left of the window go back to the pool and are never read (their
/// table entries are -1, which the CPU backend refuses to look up), and the bounded cache's tokens and logits equal the
/// unbounded windowed cache's.
/// </summary>
public class SlidingWindowCacheTests
{
    private const int Window = 12, BlockSize = 4;
    private readonly CpuBackend _cpu = new(1);

    private Transformer Model(int seed, int context = 96, int window = Window)
    {
        var config = ModelPresets.Get("mistral-debug") with { MaxSequenceLength = context, SlidingWindow = window };
        var model = new Transformer(config, _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, model.Parameters, new Random(seed));   // O(0.3) weights: no near-ties between candidates
        return model;
    }

    private PagedKvCache Cache(Transformer model, int blocks) =>
        new(_cpu, DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize, new PagedKvCacheOptions
        {
            BlockSize = BlockSize,
            MemoryBytes = blocks * PagedKvCache.BlockBytes(DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize, BlockSize),
        });

    /// <summary>Greedy decoding of <paramref name="sequences"/> to their maximum lengths; each step's sampled logits (F32, as the runner hands them out) and the peak blocks in use.</summary>
    private static (List<float[]> Logits, int PeakInUse, int PeakHeld) Decode(Scheduler scheduler, PagedModelRunner runner, PagedKvCache cache,
        IReadOnlyList<Sequence> sequences, Action<ScheduledStep>? afterStep = null)
    {
        foreach (var s in sequences) scheduler.Add(s);
        var logits = new List<float[]>();
        int peakInUse = 0, peakHeld = 0;
        while (!scheduler.IsIdle)
        {
            var step = scheduler.Schedule();
            Assert.False(step.IsEmpty, "the scheduler could not place a step");
            peakInUse = Math.Max(peakInUse, cache.Allocator.InUse);
            foreach (var s in step.Sequences) peakHeld = Math.Max(peakHeld, s.Sequence.HeldBlocks);
            int sampled = runner.Run(step, withLogits: true, out var greedy, out var rows);
            scheduler.Complete(step);
            int m = 0, v = rows.Length / Math.Max(sampled, 1);
            foreach (var s in step.Sequences.Where(s => s.Samples))
            {
                logits.Add(rows.Slice(m * v, v).ToArray());
                s.Sequence.Append(greedy[m]);                                    // a full sequence ends here, as in the engine
                if (s.Sequence.Tokens.Count == s.Sequence.MaxLength) scheduler.Finish(s.Sequence);
                m++;
            }
            afterStep?.Invoke(step);
        }
        return (logits, peakInUse, peakHeld);
    }

    /// <summary>
    /// One sequence (10 prompt tokens, 62 generated: 72 positions, 6 windows) through a pool of exactly the bound's blocks
    /// (window 12 + chunk 8 in blocks of 4: 6) against a pool of 64 blocks whose scheduler keeps every block: the same greedy
    /// tokens and bit-identical logits (the CPU attention gathers the same blocks in both, so the arithmetic is the same);
    /// the bounded one never holds more than the bound, while the unbounded one ends holding all 18 blocks.
    /// </summary>
    [Fact]
    public void BoundedPoolGivesTheUnboundedWindowedCachesTokensAndLogitsBitForBit()
    {
        const int seed = 21, budget = 8, length = 72;
        var model = Model(seed);
        var prompt = Prompt(new Random(seed), 10);
        int bound = Scheduler.BlocksHeld(length, BlockSize, Window, budget);
        Assert.Equal(6, bound);                                      // (12 + 8 + 2 * 4 - 3) / 4

        using var boundedCache = Cache(model, bound);
        var bounded = new Scheduler(boundedCache, new SchedulerOptions { MaxBatch = 1, TokenBudget = budget }, Window);
        using var boundedRunner = new PagedModelRunner(model, boundedCache, budget, 1, length, recordGraphs: false);
        var a = new Sequence(0, prompt, length);
        var sawReleased = false;
        var (boundedLogits, boundedPeak, _) = Decode(bounded, boundedRunner, boundedCache, [a], _ => sawReleased |= a.BlockTable.Contains(-1));

        using var fullCache = Cache(model, 64);
        var unbounded = new Scheduler(fullCache, new SchedulerOptions { MaxBatch = 1, TokenBudget = budget });   // no window: keeps every block
        using var fullRunner = new PagedModelRunner(model, fullCache, budget, 1, length, recordGraphs: false);
        var b = new Sequence(0, prompt, length);
        int fullPeak = 0;
        var (fullLogits, _, _) = Decode(unbounded, fullRunner, fullCache, [b], _ => fullPeak = Math.Max(fullPeak, b.HeldBlocks));

        Assert.Equal(b.Tokens, a.Tokens);
        Assert.Equal(fullLogits.Count, boundedLogits.Count);
        for (int i = 0; i < fullLogits.Count; i++) Assert.True(fullLogits[i].AsSpan().SequenceEqual(boundedLogits[i]), $"step {i}: logits differ");
        Assert.True(sawReleased, "no block was returned to the pool");
        Assert.True(boundedPeak <= bound, $"{boundedPeak} blocks in use, above the bound of {bound}");
        Assert.Equal(18, fullPeak);                                  // 72 positions in blocks of 4
        Assert.Equal(0, boundedCache.Allocator.InUse);
    }

    /// <summary>
    /// The bounded paged cache against the dense, unbounded KvCache of `tessera generate` (every position kept, the window
    /// applied when reading): the same greedy tokens over 60 positions, and each step's logits within F32 rounding
    /// (the runner hands them out as F32; the F64 sums run in another order: 1e-6 relative).
    /// </summary>
    [Fact]
    public void BoundedPoolMatchesTheDenseUnboundedCache()
    {
        const int seed = 22, length = 60;
        var model = Model(seed);
        var prompt = Prompt(new Random(seed), 7);
        using var cache = Cache(model, Scheduler.BlocksHeld(length, BlockSize, Window, 8));
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 1, TokenBudget = 8 }, Window);
        using var runner = new PagedModelRunner(model, cache, 8, 1, length, recordGraphs: false);
        var sequence = new Sequence(0, prompt, length);
        var (logits, _, _) = Decode(scheduler, runner, cache, [sequence]);

        var dense = model.CreateKvCache(1);
        var tokens = sequence.Tokens.ToArray();
        var all = TestTensors.ToDoubles(_cpu, model.ForwardWithCache(_cpu.FromArray(tokens, 1, length), dense));   // (1, T, Vpad)
        int v = model.Config.VocabSize, vPad = model.Config.EffectivePaddedVocab;
        Assert.Equal(length - prompt.Length, logits.Count);          // a logits row per generated token (the last one is not fed back)
        for (int i = 0; i < logits.Count; i++)
        {
            int position = prompt.Length - 1 + i;
            var expected = all.Skip(position * vPad).Take(v).ToArray();
            NumericAssert.Close(expected, logits[i].Select(x => (double)x).ToArray(), 1e-6, $"logits at position {position}");
            if (position + 1 < length) Assert.Equal(Array.IndexOf(expected, expected.Max()), tokens[position + 1]);
        }
    }

    /// <summary>
    /// Three sequences decoding side by side with chunked prefill (prompts of 3, 17 and 30, to 80 positions) in a pool that
    /// holds their bounds (3 x 6 blocks) but not one unbounded sequence (20 blocks): all finish with the tokens each gets
    /// alone through `tessera generate`'s dense path, no sequence ever holds more than the bound, and no one is preempted.
    /// </summary>
    [Fact]
    public void SequencesFarPastTheWindowStayWithinTheirBoundInASmallPool()
    {
        const int seed = 23, length = 80, budget = 8;
        var model = Model(seed, context: length);
        var rng = new Random(seed);
        int[][] prompts = [Prompt(rng, 3), Prompt(rng, 17), Prompt(rng, 30)];
        int bound = Scheduler.BlocksHeld(length, BlockSize, Window, budget);
        using var cache = Cache(model, 3 * bound);
        Assert.True(new Scheduler(cache, new SchedulerOptions { MaxBatch = 3, TokenBudget = budget }).BlocksHeld(length) > cache.Blocks,
            "the pool must be too small for one unbounded sequence");
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 3, TokenBudget = budget }, Window);
        using var runner = new PagedModelRunner(model, cache, budget, 3, length, recordGraphs: false);
        var sequences = prompts.Select((p, i) => new Sequence(i, p, length)).ToList();
        var (_, peakInUse, peakHeld) = Decode(scheduler, runner, cache, sequences);

        var generator = new TextGenerator(model);
        for (int i = 0; i < prompts.Length; i++)
        {
            var expected = generator.Generate(prompts[i], new GenerationOptions { MaxNewTokens = length, BoundedWindowCache = false }).ToList();
            Assert.Equal(expected, sequences[i].Tokens.Skip(prompts[i].Length));
        }
        Assert.True(peakHeld <= bound, $"a sequence held {peakHeld} blocks, above its bound of {bound}");
        Assert.True(peakInUse <= 3 * bound);
        Assert.Equal(0, scheduler.PreemptionCount);
        Assert.Equal(0, cache.Allocator.InUse);
    }

    /// <summary>
    /// Prefix sharing: sequence B arrives with A's 20-token prompt once A has computed it and takes the cached blocks inside
    /// the window of its position 16 (blocks 1-3, positions 4-15; block 0 lies left of it and is not taken), sharing blocks 2
    /// and 3 with A. A runs a step ahead, so its window leaves each shared block one step before B's: then A has dropped
    /// its reference and the block stays in use under B alone. After every step each block's reference count equals the
    /// table entries that name it; both sequences' tokens equal the prompt's alone.
    /// </summary>
    [Fact]
    public void PrefixBlocksSharedWithAnotherSequenceAreNotFreedUnderIt()
    {
        const int seed = 24, length = 48, budget = 32;
        var model = Model(seed);
        var prompt = Prompt(new Random(seed), 20);
        var alone = new TextGenerator(model).Generate(prompt, new GenerationOptions { MaxNewTokens = length - prompt.Length, BoundedWindowCache = false }).ToList();
        using var cache = Cache(model, 40);
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 2, TokenBudget = budget }, Window);
        using var runner = new PagedModelRunner(model, cache, budget, 2, length, recordGraphs: false);
        var a = new Sequence(0, prompt, length);
        var b = new Sequence(1, prompt, length);
        scheduler.Add(a);
        Step(scheduler, runner);                                     // A's prompt, all 20 tokens: blocks 0-4 registered
        scheduler.Add(b);
        Step(scheduler, runner);                                     // A decodes, B joins with the cached prefix
        Assert.Equal(16, b.CachedPromptTokens);
        Assert.Equal(-1, b.BlockTable[0]);                           // left of the window of position 16 (5 .. 16): not taken
        Assert.Equal(a.BlockTable.Skip(2).Take(2), b.BlockTable.Skip(2).Take(2));
        var sharedThenB = new HashSet<int>();
        while (!scheduler.IsIdle)
        {
            Step(scheduler, runner);
            var named = new Dictionary<int, int>();
            foreach (var s in new[] { a, b }.Where(s => s.Status == SequenceStatus.Running))
                foreach (var block in s.BlockTable.Where(x => x >= 0)) named[block] = named.GetValueOrDefault(block) + 1;
            foreach (var (block, count) in named) Assert.Equal(count, cache.Allocator.References(block));
            Assert.Equal(named.Count, cache.Allocator.InUse);
            for (int i = 2; i < 4 && b.Status == SequenceStatus.Running; i++)
                if (a.BlockTable.Count > i && a.BlockTable[i] == -1 && b.BlockTable[i] >= 0) sharedThenB.Add(i);
        }
        Assert.Equal([2, 3], sharedThenB.Order());                   // each shared block outlived A's reference under B
        Assert.Equal(alone, b.Tokens.Skip(prompt.Length));
        Assert.Equal(alone, a.Tokens.Skip(prompt.Length));
        Assert.Equal(0, cache.Allocator.InUse);
    }

    private static void Step(Scheduler scheduler, PagedModelRunner runner)
    {
        var step = scheduler.Schedule();
        runner.Run(step, withLogits: false, out var greedy, out _);
        scheduler.Complete(step);
        int m = 0;
        foreach (var s in step.Sequences.Where(s => s.Samples))
        {
            s.Sequence.Append(greedy[m]);
            if (s.Sequence.Tokens.Count == s.Sequence.MaxLength) scheduler.Finish(s.Sequence);
            m++;
        }
    }

    /// <summary>
    /// `tessera generate` of a windowed model: the bounded cache (prefill in chunks of 8) gives the dense unbounded cache's
    /// greedy tokens over 80 positions, in a pool of 48 positions (3 blocks of 16: window 12 + chunk 8, rounded to blocks)
    /// instead of the dense cache's 96; a chunk below 1 is refused before anything runs.
    /// </summary>
    [Fact]
    public void GenerateThroughTheBoundedCacheMatchesTheDenseCacheInAPoolOfTheWindow()
    {
        var model = Model(25);
        var prompt = Prompt(new Random(25), 11);
        var generator = new TextGenerator(model);
        var dense = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = 69, BoundedWindowCache = false }).ToList();
        Assert.Equal(96, generator.LastRunCachePositions);
        var bounded = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = 69, WindowPrefillChunk = 8 }).ToList();
        Assert.Equal(dense, bounded);
        Assert.Equal(69, bounded.Count);
        Assert.Equal(48, generator.LastRunCachePositions);            // (12 + 8 + 2 * 16 - 3) / 16 = 3 blocks of 16
        Assert.InRange(generator.LastRunPeakBlocks, 2, 3);
        var e = Assert.Throws<ArgumentException>(() => generator.Generate(prompt, new GenerationOptions { WindowPrefillChunk = 0 }));
        Assert.Contains("WindowPrefillChunk", e.Message);
    }

    /// <summary>
    /// Serving admits by the bound: an engine whose KV memory holds 5 blocks of 16 serves four concurrent 96-position
    /// requests of a windowed model (each holds at most 3 blocks with a budget of 16) with the dense path's tokens, and
    /// returns every block; without the window the same memory cannot hold one such request (6 blocks) and the engine
    /// refuses to start.
    /// </summary>
    [Fact]
    public async Task TheEngineAdmitsWindowedSequencesByTheirBoundAndServesThemFarPastTheWindow()
    {
        var model = Model(26);
        var rng = new Random(26);
        var prompts = Enumerable.Range(0, 4).Select(i => Prompt(rng, 5 + 7 * i)).ToArray();
        var expected = prompts.Select(p => new TextGenerator(model).Generate(p, new GenerationOptions { MaxNewTokens = 96 - p.Length, BoundedWindowCache = false }).ToList()).ToList();
        long blockBytes = PagedKvCache.BlockBytes(DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize, 16);
        var options = new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = 5 * blockBytes },
            Scheduler = new SchedulerOptions { MaxBatch = 4, TokenBudget = 16 },
        };
        var unwindowed = new Transformer(model.Config with { SlidingWindow = 0 }, _cpu, DType.F64);
        var refused = Assert.Throws<ArgumentException>(() => new InferenceEngine(unwindowed, new ByteTokenizer(), options));
        Assert.Contains("needs 6", refused.Message);
        using var engine = new InferenceEngine(model, new ByteTokenizer(), options);
        var tasks = prompts.Select(async p =>
        {
            var produced = new List<int>();
            await foreach (var e in engine.Submit(new CompletionRequest { Prompt = p, MaxTokens = 96 - p.Length }).ReadAllAsync()) produced.AddRange(e.Tokens);
            return produced;
        }).ToArray();
        var results = await Task.WhenAll(tasks);
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], results[i]);
        Assert.Equal(0, engine.Metrics.KvBlocksInUse);
    }

    private static int[] Prompt(Random rng, int length) => Enumerable.Range(0, length).Select(_ => rng.Next(1, 90)).ToArray();
}
