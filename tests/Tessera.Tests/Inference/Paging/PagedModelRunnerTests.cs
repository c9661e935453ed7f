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
        var model = new Transformer(ModelPresets.Get(preset), _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, model.Parameters, new Random(seed));   // O(0.3) weights: no near-ties between candidates
        return model;
    }

    [Theory]
    [InlineData("gpt2-debug")]
    [InlineData("llama-debug")]
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
        using var cache = new PagedKvCache(_cpu, DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize,
            new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 64 * PagedKvCache.BlockBytes(DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize, 4) });
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 4, TokenBudget = 8 });
        using var runner = new PagedModelRunner(model, cache, 8, 4, model.Config.MaxSequenceLength, recordGraphs: false);
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
        Assert.True(unresolvedInputs >= prompts.Length * (newTokens - 2), $"only {unresolvedInputs} inputs were read on the device");
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], sequences[i].Tokens.Skip(prompts[i].Length));
        Assert.Equal(0, cache.Allocator.InUse);
        Assert.Equal(0, runner.PendingSteps);
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

    private static int[] Prompt(Random rng, int length) => Enumerable.Range(0, length).Select(_ => rng.Next(1, 90)).ToArray();
}
