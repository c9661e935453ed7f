using System.Globalization;
using Tessera.Cuda;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Models;
using Tessera.Nn;
using Tessera.Nn.Layers;
using Tessera.Nn.Quantization;
using Tessera.Tensors;
using Tessera.Training.Benchmarks;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Paged decode steps of a Mixtral-8x7B-shaped model cut to two layers (C 4096, 32 heads, 8 KV heads, 8 experts of 14,336,
/// top 2, vocabulary 32,000), of a Qwen2-57B-A14B-shaped one (C 3584, 28 heads, 4 KV heads, 64 experts of 2,560, top 8, a
/// gated shared expert of 20,480) and of a Qwen3-30B-A3B-shaped one (C 2048, 32 heads of 128, 4 KV heads, 128 experts of 768,
/// top 8, vocabulary 151,936; Mixtral and Qwen3 lie on the two sides of
/// <see cref="SparseMoeFeedForward.DefaultDeviceRoutingMaxExpertWeights"/>; BenchmarkWeights' random weights, so the router
/// spreads the rows) at 1, 16 and 64 sequences,
/// with bf16 and int4 weights (groups of 128), through the device-routed experts (<see cref="SparseMoeFeedForward"/>'s decode
/// path, the step recorded as a CUDA graph) with the experts' products on tensor cores (moe.cu's <c>moe_gemm_*</c>, the
/// default) and on CUDA cores (<see cref="CudaBackendOptions.MoeExpertTensorCores"/> off: <c>moe_expert_*</c>), and through the host's routing (<see cref="SparseMoeFeedForward.DeviceRouting"/>
/// off: a read-back a layer, eager), in ms a step with the host, median of 10; and prefill-size steps of both paths
/// (<see cref="MoeShapedPrefillDeviceAgainstHostRouting"/>). Runs only when TESSERA_CUDA_TIMINGS=1 (and
/// TESSERA_MOE_SHAPES, a comma-separated list, picks shapes); the
/// table goes to the test output and to moe-decode-timings.md beside $TESSERA_CUDA_TIMINGS_OUT. Not a test of speed: it fails
/// only if a recorded step was expected and none was recorded, or the device path was not taken.
/// </summary>
[Collection("cuda")]
public sealed class CudaMixtureOfExpertsSpeedReport(CudaFixture fixture) : CudaTestBase(fixture)
{
    [Theory]
    [InlineData("mixtral-8x7b")]
    [InlineData("qwen2-57b-a14b")]
    [InlineData("qwen3-30b-a3b")]
    public void MoeShapedDecodeStepsDeviceAgainstHostRouting(string shape)
    {
        SkipUnlessAsked(shape);
        var gpu = Gpu;
        var config = Config(shape);
        int[] rowCounts = [1, 16, 64];
        // The device path on tensor cores (the default), on CUDA cores (a backend of its own with MoeExpertTensorCores off, and
        // its own copy of the model), and the host's routing.
        using var cudaCores = new CudaBackend(gpu.CudaDevice.Ordinal, gpu.Options with { MoeExpertTensorCores = false });
        var rows = new List<string>();
        foreach (var quantization in new[] { WeightQuantization.None, WeightQuantization.Int4 })
        {
            var ms = new double[rowCounts.Length, 3];
            foreach (var backend in new[] { gpu, cudaCores })
            {
                var model = quantization == WeightQuantization.None ? new Transformer(config, backend, DType.BF16)
                    : PretrainedModel.Quantized(config, backend, DType.BF16, quantization: quantization);
                using var release = new WeightsRelease(model);       // before the next model: the shapes' weights do not fit twice
                model.ValidateInputs = false;
                BenchmarkWeights.Initialize(model, seed: 2);
                var layers = model.Blocks.Select(b => b.Mlp).OfType<SparseMoeFeedForward>().ToList();
                // Mixtral's experts are past the device path's default bound (which this report measured): take it anyway.
                foreach (var l in layers) l.DeviceRoutingMaxExpertWeights = long.MaxValue;
                for (int r = 0; r < rowCounts.Length; r++)
                {
                    int n = rowCounts[r];
                    foreach (bool device in backend == gpu ? new[] { true, false } : [true])
                    {
                        foreach (var l in layers) l.DeviceRouting = device;
                        using var cache = new PagedKvCache(backend, DType.BF16, config.Layers, config.EffectiveKvHeads, config.HeadSize,
                            new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = 1L << 30 });
                        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 64, TokenBudget = 4096 });
                        using var runner = new PagedModelRunner(model, cache, 4096, 64, config.MaxSequenceLength, recordGraphs: true);
                        for (int i = 0; i < n; i++) scheduler.Add(new Sequence(i, Enumerable.Range(0, 64).Select(j => (7 * i + 13 * j) % 32000).ToArray(), 256));
                        CudaPagedServingTests.PrefillAll(scheduler, runner, n);
                        for (int i = 0; i < 3; i++) CudaPagedServingTests.Step(scheduler, runner);   // eager, then recorded where it can be
                        long routed = layers.Sum(l => l.DeviceRoutedForwards);
                        ms[r, !device ? 2 : backend == gpu ? 0 : 1] = MedianMs(backend, () => CudaPagedServingTests.Step(scheduler, runner), 10);
                        if (device)
                        {
                            Assert.True(runner.RecordedGraphs > 0, $"{quantization} at {n} rows: no decode step was recorded");
                            Assert.True(model.RoutesExpertsOnDevice(n), $"{quantization} at {n} rows: the device path was not for this step");
                        }
                        else Assert.Equal(routed, layers.Sum(l => l.DeviceRoutedForwards));
                    }
                }
            }
            for (int r = 0; r < rowCounts.Length; r++)
                rows.Add(string.Create(CultureInfo.InvariantCulture,
                    $"| {WeightsName(quantization)} | {rowCounts[r]} | {ms[r, 0]:F3} | {ms[r, 1]:F3} | {ms[r, 2]:F3} | {ms[r, 2] / ms[r, 0]:F2} |"));
        }
        WriteTable("decode", shape, "paged decode at 64+ positions",
            "| weights | sequences | device routing, tensor cores, recorded, ms/step | device routing, CUDA cores, recorded | host routing, eager | host / device (tensor cores) |\n|---|---:|---:|---:|---:|---:|",
            rows);
    }

    private static string WeightsName(WeightQuantization quantization) => quantization == WeightQuantization.None ? "bf16" : "int4, groups of 128";

    /// <summary>Prints a report's table and writes it to moe-{kind}-timings-{shape}.md beside $TESSERA_CUDA_TIMINGS_OUT.</summary>
    private static void WriteTable(string kind, string shape, string what, string header, IEnumerable<string> rows)
    {
        string table = header + "\n" + string.Join("\n", rows);
        Console.WriteLine($"[moe {kind}] {shape} shape, 2 layers, {what}\n" + table);
        if (Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS_OUT") is { Length: > 0 } path)
            File.WriteAllText(Path.Combine(Path.GetDirectoryName(path) ?? ".", $"moe-{kind}-timings-{shape}.md"), table + "\n");
    }

    /// <summary>The report's three shapes, cut to two layers.</summary>
    private static TransformerConfig Config(string shape) => shape switch
    {
        "mixtral-8x7b" => new TransformerConfig
            {
                Family = ModelFamily.Llama, ModelType = "mixtral", VocabSize = 32000, MaxSequenceLength = 256, Layers = 2, Embedding = 4096,
                Heads = 32, KvHeads = 8, Hidden = 14336, Experts = 8, ExpertsPerToken = 2, NormalizeExpertWeights = true, Bias = false,
                TiedEmbeddings = false, RopeTheta = 1000000,
            },
        // Qwen2-57B-A14B: 64 experts of 2,560 (9.2 Mi weights a product, between the other two), top 8, the weights left as the
        // router's probabilities, and a gated shared expert of 20,480.
        "qwen2-57b-a14b" => new TransformerConfig
            {
                Family = ModelFamily.Llama, ModelType = "qwen2_moe", VocabSize = 151936, MaxSequenceLength = 256, Layers = 2, Embedding = 3584,
                Heads = 28, KvHeads = 4, Hidden = 18944, ExpertHidden = 2560, Experts = 64, ExpertsPerToken = 8, SharedExpertHidden = 20480,
                SharedExpertGated = true, Bias = false, AttentionBias = true, TiedEmbeddings = false, RopeTheta = 1000000, NormEpsilon = 1e-6,
            },
        "qwen3-30b-a3b" => new TransformerConfig
            {
                Family = ModelFamily.Llama, ModelType = "qwen3_moe", VocabSize = 151936, MaxSequenceLength = 256, Layers = 2, Embedding = 2048,
                Heads = 32, ExplicitHeadSize = 128, KvHeads = 4, Hidden = 6144, ExpertHidden = 768, Experts = 128, ExpertsPerToken = 8,
                NormalizeExpertWeights = true, Bias = false, QkNorm = true, TiedEmbeddings = false, RopeTheta = 1000000, NormEpsilon = 1e-6,
            },
        _ => throw new ArgumentException($"no MoE report shape '{shape}'", nameof(shape)),
    };

    /// <summary>Frees a model's weights on the device when disposed (the arena, or a quantized model's storage), so that each
    /// shape's cases start from the memory the previous ones held and not from what the garbage collector has yet to see.</summary>
    private sealed class WeightsRelease(Transformer model) : IDisposable
    {
        public void Dispose()
        {
            if (model.Layout.Storage is ParameterArena arena) arena.Release();
            else (model.Layout.Storage as IDisposable)?.Dispose();
        }
    }

    /// <summary>Skips unless TESSERA_CUDA_TIMINGS=1 and TESSERA_MOE_SHAPES (when set) names <paramref name="shape"/>.</summary>
    private static void SkipUnlessAsked(string shape)
    {
        if (Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS") != "1") Assert.Skip("timings run only with TESSERA_CUDA_TIMINGS=1");
        if (Environment.GetEnvironmentVariable("TESSERA_MOE_SHAPES") is { Length: > 0 } only && !only.Split(',').Contains(shape))
            Assert.Skip($"TESSERA_MOE_SHAPES={only} leaves out {shape}");
    }

    /// <summary>
    /// Prefill-size steps (4, 16, 32 and 64 prompts of 64 tokens: 256 to 4,096 rows in one step) of the same shapes with bf16
    /// and int4 weights (groups of 128) through the device-routed experts (the layers' <see cref="SparseMoeFeedForward.DeviceRoutingMaxRows"/>
    /// raised past the step; the tensor-core products take each expert's rows 64 at a time, reading its weights once a chunk)
    /// and through the host's routing (the bound set to 64: a read-back a layer, then each chosen expert's products), in ms a
    /// prefill with the host (the prefill step, then one decode step), median of 3 fresh caches after a warm-up, beside the path
    /// the default bound takes (<see cref="SparseMoeFeedForward.DefaultRowBound"/>). The table goes to the test output and to
    /// moe-prefill-timings-{shape}.md beside $TESSERA_CUDA_TIMINGS_OUT. Not a test of speed: it fails only if a path was not
    /// the one asked for.
    /// </summary>
    [Theory]
    [InlineData("mixtral-8x7b")]
    [InlineData("qwen2-57b-a14b")]
    [InlineData("qwen3-30b-a3b")]
    public void MoeShapedPrefillDeviceAgainstHostRouting(string shape)
    {
        SkipUnlessAsked(shape);
        var gpu = Gpu;
        var config = Config(shape);
        var rows = new List<string>();
        foreach (var quantization in new[] { WeightQuantization.None, WeightQuantization.Int4 })
        {
            var model = quantization == WeightQuantization.None ? new Transformer(config, gpu, DType.BF16)
                : PretrainedModel.Quantized(config, gpu, DType.BF16, quantization: quantization);
            using var release = new WeightsRelease(model);
            model.ValidateInputs = false;
            BenchmarkWeights.Initialize(model, seed: 2);
            var layers = model.Blocks.Select(b => b.Mlp).OfType<SparseMoeFeedForward>().ToList();
            foreach (int prompts in new[] { 4, 16, 32, 64 })
            {
                var ms = new double[2];
                foreach (var l in layers) l.DeviceRoutingMaxRows = null;
                string byDefault = model.RoutesExpertsOnDevice(prompts * 64) ? "device" : "host";
                foreach (bool device in new[] { true, false })
                {
                    foreach (var l in layers) l.DeviceRoutingMaxRows = device ? 4096 : SparseMoeFeedForward.DefaultDeviceRoutingMaxRows;
                    double Prefill()
                    {
                        using var cache = new PagedKvCache(gpu, DType.BF16, config.Layers, config.EffectiveKvHeads, config.HeadSize,
                            new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = 1L << 30 });
                        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 64, TokenBudget = 4096 });
                        using var runner = new PagedModelRunner(model, cache, 4096, 64, config.MaxSequenceLength, recordGraphs: false);
                        for (int i = 0; i < prompts; i++) scheduler.Add(new Sequence(i, Enumerable.Range(0, 64).Select(j => (7 * i + 13 * j) % 32000).ToArray(), 256));
                        gpu.Synchronize();
                        long before = layers.Sum(l => l.DeviceRoutedForwards);
                        var clock = System.Diagnostics.Stopwatch.StartNew();
                        CudaPagedServingTests.PrefillAll(scheduler, runner, prompts);
                        gpu.Synchronize();
                        double elapsed = clock.Elapsed.TotalMilliseconds;
                        long routed = layers.Sum(l => l.DeviceRoutedForwards) - before;
                        // Device: the prefill step(s) and the decode step on the device path; host: only the decode step there.
                        if (device) Assert.True(routed >= 2 * layers.Count, $"{routed} device-routed layer forwards for the prefill and a decode step");
                        else Assert.Equal(layers.Count, routed);
                        return elapsed;
                    }
                    Prefill();                                                          // warm-up: cuBLASLt's first-use tuning, kernels loaded
                    var times = Enumerable.Range(0, 3).Select(_ => Prefill()).Order().ToArray();
                    ms[device ? 0 : 1] = times[1];
                }
                foreach (var l in layers) l.DeviceRoutingMaxRows = null;
                rows.Add(string.Create(CultureInfo.InvariantCulture,
                    $"| {WeightsName(quantization)} | {prompts} x 64 = {prompts * 64} | {ms[0]:F3} | {ms[1]:F3} | {ms[1] / ms[0]:F2} | {byDefault} |"));
            }
        }
        WriteTable("prefill", shape, "one prefill step then one decode step",
            "| weights | prefill rows | device routing, tensor cores, ms | host routing, ms | host / device | the default bound's path |\n|---|---:|---:|---:|---:|---|",
            rows);
    }
}
