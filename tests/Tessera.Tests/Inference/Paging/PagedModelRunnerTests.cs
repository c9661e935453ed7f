using Tessera.Inference;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Inference.Paging;

/// <summary>The paged, batched forward pass against the dense KV-cache path of one sequence at a time.</summary>
public class PagedModelRunnerTests
{
    private readonly CpuBackend _cpu = new(1);

    private Transformer RandomModel(string preset, int seed)
    {
        var config = preset switch
        {
            // Paged serving takes LongRoPE within its original context only: phi4-mini-debug's context cut to its original 16
            // would be too short for these sequences, so the original is stretched to a context of 32 (short factors, partial rotary).
            "phi4-mini-served" => ModelPresets.Get("phi4-mini-debug") with
            {
                MaxSequenceLength = 32, RopeScaling = ModelPresets.Get("phi4-mini-debug").RopeScaling! with { OriginalMaxPositions = 32 },
            },
            _ => ModelPresets.Get(preset),
        };
        var model = new Transformer(config, _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, model.Parameters, new Random(seed));   // O(0.3) weights: no near-ties between candidates
        return model;
    }

    [Theory]
    [InlineData("gpt2-debug")]
    [InlineData("llama-debug")]
    [InlineData("llama-headsize-debug")]   // the pool's rows are D = 16 wide, not C / H = 12
    [InlineData("qwen3-debug")]            // the unfused paged path: product, q/k norms, RoPE, append
    [InlineData("mixtral-debug")]          // experts routed on the device per step (at most 8 rows), through ForwardAccumulate
    [InlineData("qwen3-moe-debug")]
    [InlineData("qwen2-moe-debug")]        // the shared expert on every row of the step
    [InlineData("gemma2-debug")]           // scaled embeddings, post-norms, GeGLU, local layers windowed, the others not
    [InlineData("gemma3-debug")]           // and q/k norms, the local layers' own RoPE base
    [InlineData("phi3-debug")]
    [InlineData("phi4-mini-served")]       // partial rotary (6 of 8 channels) through the paged path, LongRoPE's short factors
    public void GreedyTokensOfSequencesBatchedWithChunkedPrefillEqualEachSequenceAlone(string preset)
    {
        const int seed = 7, newTokens = 10;
        var model = RandomModel(preset, seed);
        var rng = new Random(seed);
        int[][] prompts = [Prompt(rng, 13), Prompt(rng, 3), Prompt(rng, 9), Prompt(rng, 1)];
        var expected = prompts.Select(p => new TextGenerator(model).Generate(p, new GenerationOptions { MaxNewTokens = newTokens }).ToList()).ToList();

        // Blocks of 4 and a budget of 8 tokens: the 13-token prompt takes two steps while the others decode beside it.
        using var cache = new PagedKvCache(_cpu, DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize,
            new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 64 * PagedKvCache.BlockBytes(DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize, 4) });
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 4, TokenBudget = 8 });
        using var runner = new PagedModelRunner(model, cache, 8, 4, model.Config.MaxSequenceLength, recordGraphs: false);
        var sequences = prompts.Select((p, i) => new Sequence(i, p, p.Length + newTokens)).ToList();
        foreach (var s in sequences) scheduler.Add(s);
        int chunkedSteps = 0;
        while (!scheduler.IsIdle)
        {
            var step = scheduler.Schedule();
            if (step.Sequences.Any(s => s.Count > 1) && step.Sequences.Count > 1) chunkedSteps++;
            runner.Run(step, withLogits: false, out var greedy, out _);
            scheduler.Complete(step);
            int m = 0;
            foreach (var s in step.Sequences.Where(s => s.Samples))
            {
                s.Sequence.Append(greedy[m++]);
                if (s.Sequence.GeneratedCount == newTokens) scheduler.Finish(s.Sequence);
            }
        }
        Assert.True(chunkedSteps > 0, "no step mixed a prefill chunk with other sequences");
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], sequences[i].Tokens.Skip(prompts[i].Length));
        Assert.Equal(0, cache.Allocator.InUse);
    }

    /// <summary>
    /// Asynchronous scheduling at the runner: each step is enqueued before the previous one is collected, its decode tokens
    /// still unresolved (-1 - sampling row), read on the device from the previous step's argmax. The tokens equal the
    /// dense generator's for each sequence alone (exact: F64 and the same greedy choices).
    /// </summary>
    [Fact]
    public void StepsEnqueuedBeforeThePreviousStepIsCollectedGiveEachSequencesTokensAlone()
    {
        const int seed = 9, newTokens = 8;
        var model = RandomModel("llama-debug", seed);
        var rng = new Random(seed);
        int[][] prompts = [Prompt(rng, 11), Prompt(rng, 2), Prompt(rng, 6)];
        var expected = prompts.Select(p => new TextGenerator(model).Generate(p, new GenerationOptions { MaxNewTokens = newTokens }).ToList()).ToList();
        var (tokens, unresolvedInputs, _) = RunPipelined(model, prompts, newTokens, blockSize: 4, advanceOnDevice: false);
        Assert.True(unresolvedInputs >= prompts.Length * (newTokens - 2), $"only {unresolvedInputs} inputs were read on the device");
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], tokens[i]);
    }

    /// <summary>
    /// <see cref="PagedModelRunner.AdvanceOnDevice"/>: decode steps that read the previous step's tokens in order take them
    /// from its argmax and advance positions, slots and lengths on the device; the next such step copies no metadata while
    /// every row stays in its block. One sequence (batch 1, the case it is for), two (a bucket without padding) and three (a
    /// bucket of 4 with a padding row, whose slot -1 the advance would turn into 0: the host sees the difference and copies),
    /// over blocks of 8 that the sequences cross: the tokens equal the dense generator's exactly (F64, greedy), and (one or
    /// two sequences) most copies were skipped.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void AdvancingTheMetadataOnTheDeviceGivesEachSequencesTokensAlone(int count)
    {
        const int seed = 13, newTokens = 20;
        var model = RandomModel("llama-debug", seed);
        var rng = new Random(seed);
        int[][] prompts = [Prompt(rng, 5), Prompt(rng, 3), Prompt(rng, 7)];
        prompts = prompts.Take(count).ToArray();
        var expected = prompts.Select(p => new TextGenerator(model).Generate(p, new GenerationOptions { MaxNewTokens = newTokens }).ToList()).ToList();
        var (tokens, _, skipped) = RunPipelined(model, prompts, newTokens, blockSize: 8, advanceOnDevice: true);
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], tokens[i]);
        // 20 decode steps over blocks of 8: a copy at each block crossing and at the first pipelined step. (With three
        // sequences the padded bucket copies every step; the tail, where fewer run, may skip.)
        if (count < 3) Assert.True(skipped >= 10, $"only {skipped} metadata copies were skipped");
    }

    /// <summary>Runs <paramref name="prompts"/> with every step enqueued before the previous one is collected; each
    /// sequence's new tokens, the inputs read on the device, and the metadata copies skipped.</summary>
    private (List<int[]> Tokens, int UnresolvedInputs, long Skipped) RunPipelined(Transformer model, int[][] prompts, int newTokens, int blockSize, bool advanceOnDevice)
    {
        using var cache = new PagedKvCache(_cpu, DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize,
            new PagedKvCacheOptions { BlockSize = blockSize, MemoryBytes = 64 * PagedKvCache.BlockBytes(DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize, blockSize) });
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 4, TokenBudget = 8 });
        using var runner = new PagedModelRunner(model, cache, 8, 4, model.Config.MaxSequenceLength, recordGraphs: false) { AdvanceOnDevice = advanceOnDevice };
        var sequences = prompts.Select((p, i) => new Sequence(i, p, p.Length + newTokens)).ToList();
        foreach (var s in sequences) scheduler.Add(s);

        void Collect(ScheduledStep step)
        {
            runner.Collect(out var greedy, out _);
            int m = 0;
            foreach (var s in step.Sequences.Where(s => s.Samples))
            {
                int token = greedy[m++];
                if (s.Sequence.Status == SequenceStatus.Finished) continue;
                scheduler.Resolve(s.Sequence, token);
                if (s.Sequence.GeneratedCount - s.Sequence.Unresolved == newTokens) scheduler.Finish(s.Sequence);
            }
        }
        ScheduledStep? inFlight = null;
        int unresolvedInputs = 0;
        while (!scheduler.IsIdle || inFlight is not null)
        {
            var step = scheduler.Schedule();
            if (step.IsEmpty)
            {
                Collect(inFlight!);                                   // every sequence is full: its last token ends it
                inFlight = null;
                continue;
            }
            unresolvedInputs += step.Sequences.Count(s => s.Sequence.Tokens[s.Start + s.Count - 1] < 0);
            runner.Enqueue(step, withLogits: false);
            scheduler.Complete(step);
            int row = 0;
            foreach (var s in step.Sequences.Where(s => s.Samples)) s.Sequence.AppendUnresolved(row++);
            if (inFlight is not null) Collect(inFlight);
            inFlight = step;
        }
        Assert.Equal(0, cache.Allocator.InUse);
        Assert.Equal(0, runner.PendingSteps);
        if (!advanceOnDevice) Assert.Equal(0, runner.MetadataCopiesSkipped);
        return (sequences.Select((s, i) => s.Tokens.Skip(prompts[i].Length).ToArray()).ToList(), unresolvedInputs, runner.MetadataCopiesSkipped);
    }

    [Fact]
    public void LogitsOfAMixedStepMatchTheDenseCachePathToF64Rounding()
    {
        const int seed = 8;
        var model = RandomModel("llama-debug", seed);
        var rng = new Random(seed);
        int[] a = Prompt(rng, 6), b = Prompt(rng, 11);
        int v = model.Config.VocabSize;
        using var cache = new PagedKvCache(_cpu, DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize,
            new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 1 << 20 });
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 2, TokenBudget = 32 });
        using var runner = new PagedModelRunner(model, cache, 32, 2, model.Config.MaxSequenceLength, recordGraphs: false);
        var sa = new Sequence(0, a, 20);
        var sb = new Sequence(1, b, 20);
        scheduler.Add(sa);
        scheduler.Add(sb);
        var step = scheduler.Schedule();
        runner.Run(step, withLogits: true, out _, out var logits);
        var actual = logits.ToArray();

        for (int s = 0; s < 2; s++)
        {
            int[] prompt = s == 0 ? a : b;
            var dense = model.CreateKvCache(1);
            var full = model.ForwardWithCache(_cpu.FromArray(prompt, 1, prompt.Length), dense);
            var host = TestTensors.ToDoubles(_cpu, full);
            int vPad = model.Config.EffectivePaddedVocab;
            var expected = host.Skip((prompt.Length - 1) * vPad).Take(v).ToArray();
            // The runner hands logits out as F32: compare at F32's rounding (2^-24 relative, with margin for the F64 sums' order).
            NumericAssert.Close(expected, actual.Skip(s * v).Take(v).Select(x => (double)x).ToArray(), 1e-6, $"sequence {s} logits");
        }
    }

    /// <summary>
    /// Penalties and logit_bias added on the device (<see cref="Sequence.DevicePenalties"/>) to a verifying step's rows count
    /// the guesses before each row: token t has a bias of +50 and a frequency penalty of 30, so it wins the prompt's row (no
    /// count), wins the decode row once generated (net +20), and loses every row after a guess of t (net -10 or less) where
    /// it would win again if the guess were not counted. Each row's id is the argmax of the host's penalized row
    /// (<see cref="Tessera.Inference.Sampling.LogitsProcessing"/>, counts plus the guesses before it).
    /// </summary>
    [Fact]
    public void PenaltiesOnTheDeviceCountTheGuessesBeforeEachRow()
    {
        var model = RandomModel("llama-debug", 7);
        int v = model.Config.VocabSize, t = 11;
        var counts = new Dictionary<int, int>();
        var bias = new Dictionary<int, double> { [t] = 50 };
        using var cache = new PagedKvCache(_cpu, DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize,
            new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 16 * PagedKvCache.BlockBytes(DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize, 4) });
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 1, TokenBudget = 16 });
        using var runner = new PagedModelRunner(model, cache, 16, 1, model.Config.MaxSequenceLength, recordGraphs: false, maxDrafts: 3);
        var sequence = new Sequence(0, [3, 1, 4, 1, 5], 20)
        {
            MaxDrafts = 3, DevicePenalties = new Tessera.Inference.Sampling.PenaltyTerms(0, 30, bias, counts),
        };
        scheduler.Add(sequence);
        var prefill = scheduler.Schedule();
        runner.Run(prefill, withLogits: false, out var first, out _);
        scheduler.Complete(prefill);
        Assert.Equal(t, first[0]);                                           // +50, nothing generated yet
        sequence.Append(first[0]);
        counts[t] = 1;                                                       // the engine counts what it accepts
        sequence.AppendDrafts([t, t, t]);
        var step = scheduler.Schedule();
        Assert.Equal(3, step.Sequences[0].Drafts);
        runner.Run(step, withLogits: true, out var ids, out var logits);
        for (int k = 0; k < 4; k++)
        {
            var row = logits.Slice(k * v, v).ToArray();
            var withGuesses = new Dictionary<int, int>(counts) { [t] = counts[t] + k };
            Tessera.Inference.Sampling.LogitsProcessing.ApplyPenalties(row, withGuesses, 0, 30);
            Tessera.Inference.Sampling.LogitsProcessing.ApplyBias(row, bias);
            Assert.Equal(TokenSampling.ArgMax(row), ids[k]);
            Assert.Equal(k == 0, ids[k] == t);                               // +20 at the decode row, -10 or less after a guess of t
        }
    }

    private static int[] Prompt(Random rng, int length) => Enumerable.Range(0, length).Select(_ => rng.Next(1, 90)).ToArray();
}
