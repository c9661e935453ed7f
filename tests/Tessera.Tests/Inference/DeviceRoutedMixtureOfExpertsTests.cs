using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Models;
using Tessera.Nn.Layers;
using Tessera.Nn.Quantization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Inference;

/// <summary>
/// Mixture-of-experts models decoding and serving through the device-routed path (<see cref="SparseMoeFeedForward"/>'s
/// decode-size inference steps: <see cref="IBackend.MoeRoute"/> and its family, no read-back) against the host-routed path
/// of the same model (<see cref="SparseMoeFeedForward.DeviceRouting"/> off), on the CPU in F64.
/// </summary>
public sealed class DeviceRoutedMixtureOfExpertsTests
{
    private readonly CpuBackend _cpu = new(1);

    private Transformer RandomModel(string preset, int seed)
    {
        var model = new Transformer(ModelPresets.Get(preset), _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, model.Parameters, new Random(seed));   // O(0.3) weights: no routing near a tie
        return model;
    }

    private static IEnumerable<SparseMoeFeedForward> Layers(Transformer model) => model.Blocks.Select(b => b.Mlp).OfType<SparseMoeFeedForward>();

    private static void Route(Transformer model, bool onDevice)
    {
        foreach (var layer in Layers(model)) layer.DeviceRouting = onDevice;
    }

    private static long DeviceForwards(Transformer model) => Layers(model).Sum(l => l.DeviceRoutedForwards);

    /// <summary>
    /// Dense KV-cache decoding (a 5-token prefill, then 8 single-token steps of the device path's greedy tokens): every
    /// step's logits through the device path equal the host path's within 1e-12 of the largest logit. Both are F64 with the
    /// same routing (O(0.3) weights keep every choice far from a tie); they differ only in summation order (the device path
    /// adds a row's k outputs in slot order, the host in expert order; the CPU products block differently), about 1e-16 a term.
    /// The device path is taken at every step (its counter), the host path at none; a step above the 64-row bound is not.
    /// </summary>
    [Theory]
    [InlineData("mixtral-debug")]
    [InlineData("qwen3-moe-debug")]
    [InlineData("qwen2-moe-debug")]        // the gated shared expert through MoeCombine
    public void DeviceRoutedDecodingEqualsHostRoutedDecoding(string preset) => AssertDecodingAgrees(RandomModel(preset, 5), $"{preset} (seed 5)");

    /// <summary>
    /// The same with the experts quantized (<see cref="PretrainedModel.Quantized"/>: int8 with a scale a row, or int4 in
    /// groups of 16, which leaves Qwen2-MoE's F' = 24 a shorter last group), O(0.3) random weights written through the
    /// quantizing storage: the device path reads the int8 or int4 experts as the values they stand for (the CPU backend in F64,
    /// as the host path's quantized products), so the two agree within 1e-12 as above, and the device path is taken.
    /// </summary>
    [Theory]
    [InlineData("mixtral-debug", WeightQuantization.Int8)]
    [InlineData("mixtral-debug", WeightQuantization.Int4)]
    [InlineData("qwen2-moe-debug", WeightQuantization.Int4)]
    public void QuantizedExpertsRouteOnTheDeviceAsOnTheHost(string preset, WeightQuantization quantization)
    {
        const int seed = 9;
        var model = PretrainedModel.Quantized(ModelPresets.Get(preset), _cpu, DType.F64, quantization: quantization, int4GroupSize: 16);
        var rng = new Random(seed);
        foreach (var p in model.Layout.Parameters)
        {
            double mean = p.Name.EndsWith(".weight", StringComparison.Ordinal) && !p.WeightDecay ? 1.0 : 0.0;
            p.WriteMasterOrValue(t => TestTensors.Write(_cpu, t, TestTensors.Normal(rng, p.NumElements, 0.3, mean)));
        }
        var expert = Layers(model).First().Experts[0].Gate.Weight.Quantized;
        Assert.NotNull(expert);
        Assert.Equal(quantization == WeightQuantization.Int4, expert.IsInt4);
        AssertDecodingAgrees(model, $"{preset} {quantization} (seed {seed})");
    }

    /// <summary>Decodes a 5-token prompt and 8 greedy steps through the device path, then through the host path on the
    /// device path's tokens; every step's logits within 1e-12 of the largest, the device path counted at every step.</summary>
    private void AssertDecodingAgrees(Transformer model, string what)
    {
        const int steps = 8;
        int[] prompt = [3, 14, 15, 9, 2];
        Assert.True(model.RoutesExpertsOnDevice(1));
        Assert.False(model.RoutesExpertsOnDevice(SparseMoeFeedForward.DefaultDeviceRoutingMaxRows + 1));

        List<double[]> Decode(bool onDevice, IReadOnlyList<int>? tokens, List<int> chosen)
        {
            Route(model, onDevice);
            var cache = model.CreateKvCache(1);
            var all = new List<double[]>();
            int v = model.Config.VocabSize, vPad = model.Config.EffectivePaddedVocab;
            var input = prompt;
            for (int step = 0; step <= steps; step++)
            {
                var logits = model.ForwardWithCache(_cpu.FromArray(input, 1, input.Length), cache);
                var host = new double[logits.NumElements];
                _cpu.CopyToHost<double>(logits, host);
                var last = host.Skip((input.Length - 1) * vPad).Take(v).ToArray();
                all.Add(last);
                int next = tokens?[step] ?? Array.IndexOf(last, last.Max());
                chosen.Add(next);
                input = [next];
            }
            return all;
        }

        var deviceTokens = new List<int>();
        long before = DeviceForwards(model);
        var device = Decode(onDevice: true, null, deviceTokens);
        Assert.Equal(before + (steps + 1) * Layers(model).Count(), DeviceForwards(model));
        long afterDevice = DeviceForwards(model);
        var hostTokens = new List<int>();
        var host = Decode(onDevice: false, deviceTokens, hostTokens);
        Assert.Equal(afterDevice, DeviceForwards(model));
        for (int s = 0; s < device.Count; s++)
            NumericAssert.Close(host[s], device[s], 1e-12, $"{what} step {s} logits");
    }

    /// <summary>
    /// Paged serving (four sequences, chunked prefill beside decode steps, blocks of 4, a budget of 8 tokens): the greedy
    /// tokens through the device path equal the host path's exactly and every step's logits agree within 1e-6 relative (the
    /// runner hands logits out as F32: the F64 values, equal within 1e-12 as above, rounded to F32, 2^-24, with margin).
    /// Every step of the serving takes the device path (at most 8 rows), counted by the layers.
    /// </summary>
    [Theory]
    [InlineData("mixtral-debug")]
    [InlineData("qwen3-moe-debug")]
    [InlineData("qwen2-moe-debug")]
    public void DeviceRoutedPagedServingEqualsHostRoutedServing(string preset)
    {
        const int seed = 7, newTokens = 8;
        var model = RandomModel(preset, seed);
        var rng = new Random(seed);
        int[][] prompts = [Prompt(rng, 13), Prompt(rng, 3), Prompt(rng, 9), Prompt(rng, 1)];

        (List<int>[] Tokens, List<double[]> Logits, int Steps) Serve(bool onDevice)
        {
            Route(model, onDevice);
            using var cache = new PagedKvCache(_cpu, DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize,
                new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 64 * PagedKvCache.BlockBytes(DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize, 4) });
            var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 4, TokenBudget = 8 });
            using var runner = new PagedModelRunner(model, cache, 8, 4, model.Config.MaxSequenceLength, recordGraphs: true);
            var sequences = prompts.Select((p, i) => new Sequence(i, p, p.Length + newTokens)).ToList();
            foreach (var s in sequences) scheduler.Add(s);
            var logits = new List<double[]>();
            int steps = 0;
            while (!scheduler.IsIdle)
            {
                var step = scheduler.Schedule();
                runner.Run(step, withLogits: true, out var greedy, out var rows);
                logits.Add(rows.ToArray().Select(x => (double)x).ToArray());
                steps++;
                scheduler.Complete(step);
                int m = 0;
                foreach (var s in step.Sequences.Where(s => s.Samples))
                {
                    s.Sequence.Append(greedy[m++]);
                    if (s.Sequence.GeneratedCount == newTokens) scheduler.Finish(s.Sequence);
                }
            }
            return (sequences.Select((s, i) => s.Tokens.Skip(prompts[i].Length).ToList()).ToArray(), logits, steps);
        }

        long before = DeviceForwards(model);
        var device = Serve(onDevice: true);
        Assert.True(DeviceForwards(model) - before >= device.Steps * Layers(model).Count(), "a serving step took the host path");
        long afterDevice = DeviceForwards(model);
        var host = Serve(onDevice: false);
        Assert.Equal(afterDevice, DeviceForwards(model));
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(host.Tokens[i], device.Tokens[i]);
        Assert.Equal(host.Logits.Count, device.Logits.Count);
        for (int s = 0; s < host.Logits.Count; s++)
            NumericAssert.Close(host.Logits[s], device.Logits[s], 1e-6, $"{preset} (seed {seed}) step {s} logits");
    }

    /// <summary>
    /// A step of more than <see cref="SparseMoeFeedForward.DefaultDeviceRoutingMaxRows"/> rows (a 70-token prefill) keeps the host
    /// routing and the decode steps after it take the device path; the logits of both equal the host path's within 1e-12
    /// (as above).
    /// </summary>
    [Fact]
    public void StepsAboveTheRowBoundRouteOnTheHost()
    {
        const int seed = 11;
        var model = new Transformer(ModelPresets.Get("mixtral-debug") with { MaxSequenceLength = 80 }, _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, model.Parameters, new Random(seed));
        var rng = new Random(seed);
        var prompt = Prompt(rng, 70);
        Assert.False(model.RoutesExpertsOnDevice(prompt.Length));
        double[] Run(bool onDevice, out long deviceForwards)
        {
            Route(model, onDevice);
            var cache = model.CreateKvCache(1);
            long before = DeviceForwards(model);
            var prefill = _cpu.ToArray<double>(model.ForwardWithCache(_cpu.FromArray(prompt, 1, prompt.Length), cache));
            Assert.Equal(before, DeviceForwards(model));
            var step = _cpu.ToArray<double>(model.ForwardWithCache(_cpu.FromArray(new[] { 7 }, 1, 1), cache));
            deviceForwards = DeviceForwards(model) - before;
            return prefill.Concat(step).ToArray();
        }
        var device = Run(onDevice: true, out long routed);
        Assert.Equal(Layers(model).Count(), routed);                     // the decode step only
        var host = Run(onDevice: false, out long none);
        Assert.Equal(0, none);
        NumericAssert.Close(host, device, 1e-12, $"mixtral-debug (seed {seed}) prefill and decode logits");
    }

    /// <summary>
    /// <see cref="SparseMoeFeedForward.DeviceRoutingMaxRows"/> overrides the default bound: set to 80, the 70-token prefill
    /// that <see cref="StepsAboveTheRowBoundRouteOnTheHost"/> keeps on the host takes the device path, the model's bound
    /// (<see cref="Transformer.ExpertDeviceRowBound"/>) says 80 (64 with the override cleared, 0 with device routing off), and
    /// the logits equal the host path's within 1e-12 as above.
    /// </summary>
    [Fact]
    public void TheRowBoundCanBeSetPerLayer()
    {
        const int seed = 12;
        var model = new Transformer(ModelPresets.Get("mixtral-debug") with { MaxSequenceLength = 80 }, _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, model.Parameters, new Random(seed));
        var prompt = Prompt(new Random(seed), 70);
        Assert.Equal(SparseMoeFeedForward.DefaultDeviceRoutingMaxRows, model.ExpertDeviceRowBound());
        foreach (var l in Layers(model)) l.DeviceRoutingMaxRows = 80;
        Assert.Equal(80, model.ExpertDeviceRowBound());
        Assert.True(model.RoutesExpertsOnDevice(prompt.Length));
        double[] Prefill(out long routed)
        {
            long before = DeviceForwards(model);
            var logits = _cpu.ToArray<double>(model.ForwardWithCache(_cpu.FromArray(prompt, 1, prompt.Length), model.CreateKvCache(1)));
            routed = DeviceForwards(model) - before;
            return logits;
        }
        var device = Prefill(out long onDevice);
        Assert.Equal(Layers(model).Count(), onDevice);
        Route(model, onDevice: false);
        Assert.Equal(0, model.ExpertDeviceRowBound());
        var host = Prefill(out long none);
        Assert.Equal(0, none);
        Route(model, onDevice: true);
        foreach (var l in Layers(model)) l.DeviceRoutingMaxRows = null;
        Assert.Equal(SparseMoeFeedForward.DefaultDeviceRoutingMaxRows, model.ExpertDeviceRowBound());
        NumericAssert.Close(host, device, 1e-12, $"mixtral-debug (seed {seed}) 70-token prefill logits, device path against the host path");
    }

    /// <summary>
    /// A paged runner whose largest step (128 rows) is past its model's device bound (64) warms the device path at that bound
    /// as it is built, so the path's buffers reach their size before any step is recorded: every layer's device-path counter
    /// moves once during construction (the 128-row warm-up routes on the host). With the bound at the largest step it moves
    /// once too (the largest step's warm-up), and with device routing off not at all.
    /// </summary>
    [Theory]
    [InlineData(null, 1)]
    [InlineData(128, 1)]
    public void ThePagedRunnerWarmsTheDevicePathAtItsBound(int? bound, int expectedForwards)
    {
        var model = RandomModel("mixtral-debug", 14);
        foreach (var l in Layers(model)) l.DeviceRoutingMaxRows = bound;
        long Build()
        {
            using var cache = new PagedKvCache(_cpu, DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize,
                new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 64 * PagedKvCache.BlockBytes(DType.F64, model.Config.Layers, model.Config.EffectiveKvHeads, model.Config.HeadSize, 4) });
            long before = DeviceForwards(model);
            using var runner = new PagedModelRunner(model, cache, 128, 4, model.Config.MaxSequenceLength, recordGraphs: false);
            return DeviceForwards(model) - before;
        }
        Assert.Equal(expectedForwards * Layers(model).Count(), Build());
        Route(model, onDevice: false);
        Assert.Equal(0, Build());
    }

    /// <summary>
    /// The default bound on a device-routed step's rows: prefill-size steps only where the experts are narrow (at most the
    /// width bound, inclusive), at least 64 of them, and on tensor cores, up to 512 rows an expert on average and 4,096 in
    /// all; 64 for wider or fewer experts, and for any experts off tensor cores (the CPU, whose experts never say they run at
    /// the weights' bandwidth, keeps 64: see <see cref="StepsAboveTheRowBoundRouteOnTheHost"/>).
    /// </summary>
    [Theory]
    [InlineData(1_572_864, true, 128, 8, 4096)]        // Qwen3-30B-A3B's experts: 8,192 rows would give 512 an expert; 4,096 at most
    [InlineData(9_175_040, true, 64, 8, 4096)]         // Qwen2-57B-A14B's: 512 an expert at 4,096 rows
    [InlineData(16L << 20, true, 64, 8, 4096)]         // at the width bound
    [InlineData((16L << 20) + 1, true, 64, 8, 64)]     // past it
    [InlineData(2_883_584, true, 64, 16, 2048)]        // 16 a token: 512 an expert at 2,048 rows
    [InlineData(2_883_584, true, 60, 4, 64)]           // Qwen1.5-MoE-A2.7B's 60 experts: fewer than measured
    [InlineData(58_720_256, true, 8, 2, 64)]           // Mixtral-8x7B's
    [InlineData(1_572_864, false, 128, 8, 64)]         // off tensor cores
    public void TheRowBoundFollowsTheExpertsWidthCountAndTensorCores(long expertWeights, bool onTensorCores, int experts, int k, int expected) =>
        Assert.Equal(expected, SparseMoeFeedForward.DefaultRowBound(expertWeights, SparseMoeFeedForward.DefaultDeviceRoutingMaxExpertWeights,
            onTensorCores, experts, k));

    /// <summary>
    /// Experts wider than <see cref="SparseMoeFeedForward.DeviceRoutingMaxExpertWeights"/> (C x F' weights a product) keep
    /// the host routing: at the experts' own size a decode step takes the device path, one weight below it the host path
    /// (the device path's counter does not move, <see cref="Transformer.RoutesExpertsOnDevice"/> says no), and the logits
    /// of both agree within 1e-12 as above. The debug presets' experts are far below the default bound.
    /// </summary>
    [Fact]
    public void ExpertsWiderThanTheBoundRouteOnTheHost()
    {
        var model = RandomModel("mixtral-debug", 13);
        var layers = Layers(model).ToList();
        long size = layers[0].Experts[0].Gate.Weight.Shape.NumElements;
        Assert.True(size <= SparseMoeFeedForward.DefaultDeviceRoutingMaxExpertWeights);
        double[] Step(long bound, out long routed)
        {
            foreach (var l in layers) l.DeviceRoutingMaxExpertWeights = bound;
            var cache = model.CreateKvCache(1);
            model.ForwardWithCache(_cpu.FromArray(new[] { 3, 14, 15 }, 1, 3), cache);
            long before = DeviceForwards(model);
            var logits = _cpu.ToArray<double>(model.ForwardWithCache(_cpu.FromArray(new[] { 9 }, 1, 1), cache));
            routed = DeviceForwards(model) - before;
            return logits;
        }
        var device = Step(size, out long onDevice);
        Assert.Equal(layers.Count, onDevice);
        Assert.True(model.RoutesExpertsOnDevice(1));
        var host = Step(size - 1, out long none);
        Assert.Equal(0, none);
        Assert.False(model.RoutesExpertsOnDevice(1));
        NumericAssert.Close(device, host, 1e-12, "mixtral-debug (seed 13) decode logits, device path against the host path");
    }

    private static int[] Prompt(Random rng, int length) => Enumerable.Range(0, length).Select(_ => rng.Next(1, 90)).ToArray();
}
