using System.Globalization;
using Tessera.Cuda;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Models;
using Tessera.Nn.Layers;
using Tessera.Nn.Quantization;
using Tessera.Tensors;
using Tessera.Training.Benchmarks;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Paged decode steps of a Mixtral-8x7B-shaped model cut to two layers (C 4096, 32 heads, 8 KV heads, 8 experts of 14,336,
/// top 2, vocabulary 32,000) and of a Qwen3-30B-A3B-shaped one (C 2048, 32 heads of 128, 4 KV heads, 128 experts of 768, top
/// 8, vocabulary 151,936; the two sides of <see cref="SparseMoeFeedForward.DefaultDeviceRoutingMaxExpertWeights"/>;
/// BenchmarkWeights' random weights, so the router spreads the rows) at 1, 16 and 64 sequences,
/// with bf16 and int4 weights (groups of 128), through the device-routed experts (<see cref="SparseMoeFeedForward"/>'s decode
/// path, the step recorded as a CUDA graph) with the experts' products on tensor cores (moe.cu's <c>moe_gemm_*</c>, the
/// default) and on CUDA cores (<see cref="CudaBackendOptions.MoeExpertTensorCores"/> off: <c>moe_expert_*</c>), and through the host's routing (<see cref="SparseMoeFeedForward.DeviceRouting"/>
/// off: a read-back a layer, eager), in ms a step with the host, median of 10. Runs only when TESSERA_CUDA_TIMINGS=1 (and
/// TESSERA_MOE_SHAPES, a comma-separated list, picks shapes); the
/// table goes to the test output and to moe-decode-timings.md beside $TESSERA_CUDA_TIMINGS_OUT. Not a test of speed: it fails
/// only if a recorded step was expected and none was recorded, or the device path was not taken.
/// </summary>
[Collection("cuda")]
public sealed class CudaMixtureOfExpertsSpeedReport(CudaFixture fixture) : CudaTestBase(fixture)
{
    [Theory]
    [InlineData("mixtral-8x7b")]
    [InlineData("qwen3-30b-a3b")]
    public void MoeShapedDecodeStepsDeviceAgainstHostRouting(string shape)
    {
        if (Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS") != "1") Assert.Skip("timings run only with TESSERA_CUDA_TIMINGS=1");
        if (Environment.GetEnvironmentVariable("TESSERA_MOE_SHAPES") is { Length: > 0 } only && !only.Split(',').Contains(shape))
            Assert.Skip($"TESSERA_MOE_SHAPES={only} leaves out {shape}");
        var gpu = Gpu;
        var config = shape == "mixtral-8x7b"
            ? new TransformerConfig
            {
                Family = ModelFamily.Llama, ModelType = "mixtral", VocabSize = 32000, MaxSequenceLength = 256, Layers = 2, Embedding = 4096,
                Heads = 32, KvHeads = 8, Hidden = 14336, Experts = 8, ExpertsPerToken = 2, NormalizeExpertWeights = true, Bias = false,
                TiedEmbeddings = false, RopeTheta = 1000000,
            }
            : new TransformerConfig
            {
                Family = ModelFamily.Llama, ModelType = "qwen3_moe", VocabSize = 151936, MaxSequenceLength = 256, Layers = 2, Embedding = 2048,
                Heads = 32, ExplicitHeadSize = 128, KvHeads = 4, Hidden = 6144, ExpertHidden = 768, Experts = 128, ExpertsPerToken = 8,
                NormalizeExpertWeights = true, Bias = false, QkNorm = true, TiedEmbeddings = false, RopeTheta = 1000000, NormEpsilon = 1e-6,
            };
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
                    $"| {(quantization == WeightQuantization.None ? "bf16" : "int4, groups of 128")} | {rowCounts[r]} | {ms[r, 0]:F3} | {ms[r, 1]:F3} | {ms[r, 2]:F3} | {ms[r, 2] / ms[r, 0]:F2} |"));
        }
        string table = "| weights | sequences | device routing, tensor cores, recorded, ms/step | device routing, CUDA cores, recorded | host routing, eager | host / device (tensor cores) |\n|---|---:|---:|---:|---:|---:|\n"
            + string.Join("\n", rows);
        Console.WriteLine($"[moe decode] {shape} shape, 2 layers, paged decode at 64+ positions\n" + table);
        if (Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS_OUT") is { Length: > 0 } path)
            File.WriteAllText(Path.Combine(Path.GetDirectoryName(path) ?? ".", $"moe-decode-timings-{shape}.md"), table + "\n");
    }
}
