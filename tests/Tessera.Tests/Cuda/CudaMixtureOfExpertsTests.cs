using Tessera.Cuda;
using Tessera.Inference;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Inference.Sampling;
using Tessera.Models;
using Tessera.Models.Tokenization;
using Tessera.Nn.Layers;
using Tessera.Nn.Quantization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Inference;
using Tessera.Tests.Inference.Serving;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Mixture-of-experts models on the GPU: training routes on the host (experts through the row gather, a batched K = 1 product
/// and the row scatter-add), decode-size inference steps on the device (moe.cu: <see cref="IBackend.MoeRoute"/> and its
/// family). Gradients and greedy tokens against the CPU, the device ops against the CPU backend's, decode and paged serving
/// steps recorded as graphs giving the eager steps' tokens, and BF16. Skipped without a CUDA device.
/// </summary>
[Collection("cuda")]
public sealed class CudaMixtureOfExpertsTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    private readonly CpuBackend _cpu = new(2);

    private (TransformerConfig Config, Transformer OnCpu, Transformer OnGpu, float[] Weights) RandomModelOnBoth(string preset, DType cpuDType)
    {
        var gpu = Gpu;                                                // skips here without a device
        var config = ModelPresets.Get(preset) with { RouterAuxLossCoefficient = 0.01 };
        var onCpu = new Transformer(config, _cpu, cpuDType);
        Tessera.Tests.Nn.LayerCheck.Randomize(_cpu, onCpu.Parameters, new Random(9));
        var weights = TestTensors.ToDoubles(_cpu, onCpu.Parameters.Values).Select(v => (float)v).ToArray();
        TestTensors.Write(_cpu, onCpu.Parameters.Values, weights.Select(v => (double)v).ToArray());   // the CPU model holds the GPU's F32 values
        var onGpu = new Transformer(config, gpu, DType.F32);
        gpu.CopyFromHost<float>(weights, onGpu.Parameters.Values);
        return (config, onCpu, onGpu, weights);
    }

    [Theory]
    [InlineData("mixtral-debug")]
    [InlineData("qwen3-moe-debug")]
    [InlineData("qwen2-moe-debug")]
    public void F32GradientsOnTheGpuMatchTheCpuInF64(string preset)
    {
        var (config, onCpu, onGpu, _) = RandomModelOnBoth(preset, DType.F64);
        var rng = new Random(17);
        var tokens = Enumerable.Range(0, 2 * 16).Select(_ => rng.Next(config.VocabSize)).ToArray();
        var targets = Enumerable.Range(0, 2 * 16).Select(_ => rng.Next(config.VocabSize)).ToArray();
        double[] Gradients(Transformer model, IBackend backend)
        {
            model.Parameters.ZeroGrad();
            model.Loss(backend.FromArray(tokens, 2, 16), backend.FromArray(targets, 2, 16), 0, 1.0 / tokens.Length);
            model.Backward(0);
            return backend == _cpu ? TestTensors.ToDoubles(_cpu, model.Parameters.Grads) : Download(model.Parameters.Grads);
        }
        // F32 products and reductions against F64: 1e-4 of the largest gradient (no routing decision is within F32 rounding
        // at O(0.3) weights for this seed).
        AssertClose(Gradients(onCpu, _cpu), Gradients(onGpu, Gpu), 1e-4, $"{preset} gradients");
    }

    [Theory]
    [InlineData("mixtral-debug")]
    [InlineData("qwen3-moe-debug")]
    [InlineData("qwen2-moe-debug")]
    public async Task GreedyTokensOnTheGpuMatchTheCpuAndDecodeStepsAreRecorded(string preset)
    {
        var (config, onCpu, onGpu, weights) = RandomModelOnBoth(preset, DType.F32);
        int[] prompt = [5, 1, 4, 1, 5, 9, 2, 6];
        const int count = 20;
        var expected = TextGeneratorTests.Reference(onCpu, _cpu, prompt, count, SamplingOptions.Greedy);
        var generator = new TextGenerator(onGpu);
        Assert.Equal(expected, generator.Generate(prompt, new GenerationOptions { MaxNewTokens = count }).ToList());
        Assert.True(generator.LastRunRecorded, "a mixture-of-experts decode step routes on the device and should be recorded");

        int[][] prompts = [prompt, [7], [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]];
        using (var engine = new InferenceEngine(onGpu, new ByteTokenizer(), new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = 8 << 20 },
            Scheduler = new SchedulerOptions { MaxBatch = 4, TokenBudget = 32 },
            RecordGraphs = true,
        }))
        {
            var served = await EngineRequests.RunAll(engine, prompts, count);
            for (int i = 0; i < prompts.Length; i++)
                Assert.Equal(TextGeneratorTests.Reference(onCpu, _cpu, prompts[i], count, SamplingOptions.Greedy), served[i]);
            Assert.True(engine.ReplayedSteps > 0, "no mixture-of-experts serving step replayed a recorded graph");
        }

        // BF16: the 8-token prefill and every decode step route on the device (moe.cu's bf16 kernels); the tokens are in the vocabulary.
        var bf16 = new Transformer(config, Gpu, DType.BF16);
        Gpu.CopyFromHost<float>(weights, bf16.Parameters.Masters!);
        bf16.Parameters.SyncValuesFromMasters();
        Assert.All(new TextGenerator(bf16).Generate(prompt, new GenerationOptions { MaxNewTokens = count }), t => Assert.InRange(t, 0, config.VocabSize - 1));
    }

    /// <summary>
    /// The device ops on the GPU (route, align, the experts' SwiGLU and down products, the combine with and without the gated
    /// shared expert) against the CPU backend's on the same values: the expert ids exactly (normal logits, rows of equal
    /// logits: ties to the lower index on both), the routing weights within 2e-6 relative (the device's expf is within 2 ulp,
    /// and a sum of E of them and the renormalization add a few more F32 roundings, against F64), the output
    /// within 1e-5 (F32) or 2e-2 (BF16: the hidden activations and expert outputs are rounded to 8 bits, 4e-3 each, before
    /// two more sums) of its largest value, k = 1, 2 and E, N from 1 to 64, C and F off the 32-feature tile, experts with no rows.
    /// </summary>
    [Theory]
    [InlineData(1, 8, 2, 64, 96, true, false, DType.F32)]
    [InlineData(13, 6, 2, 50, 45, true, true, DType.F32)]
    [InlineData(64, 8, 2, 96, 200, false, false, DType.F32)]
    [InlineData(9, 4, 4, 40, 33, true, true, DType.F32)]
    [InlineData(7, 5, 1, 32, 64, false, true, DType.F32)]
    [InlineData(16, 8, 2, 128, 160, true, true, DType.BF16)]
    public void DeviceOpsOnTheGpuMatchTheCpuBackend(int n, int e, int k, int c, int f, bool normalize, bool shared, DType dtype)
    {
        var gpu = Gpu;
        int seed = 91 + n + e + k;
        var rng = new Random(seed);
        double[] Draw(int count, double scale) => Stored(Enumerable.Range(0, count).Select(_ => scale * (rng.NextDouble() * 2 - 1)).ToArray(), dtype);
        var z = Draw(n * e, 3);
        for (int j = 0; j < e; j++) z[j] = 0.5;                        // row 0: every logit equal
        if (e > 3) for (int r = 1; r < n; r++) z[r * e + e - 1] = -40;  // the last expert: no rows (unless k = E)
        var x = Draw(n * c, 1);
        var residual = Draw(n * c, 1);
        var sharedOut = Draw(n * c, 1);
        var gate = Draw(n, 3);
        var wg = Enumerable.Range(0, e).Select(_ => Draw(f * c, 2 / Math.Sqrt(c))).ToArray();
        var wu = Enumerable.Range(0, e).Select(_ => Draw(f * c, 2 / Math.Sqrt(c))).ToArray();
        var wd = Enumerable.Range(0, e).Select(_ => Draw(c * f, 2 / Math.Sqrt(f))).ToArray();

        (int[] Ids, double[] Weights, double[] Output) Run(IBackend backend, DType t)
        {
            var experts = backend.PrepareMoeExperts(wg.Select(w => Upload(backend, w, t, f, c)).ToList(), wu.Select(w => Upload(backend, w, t, f, c)).ToList(),
                wd.Select(w => Upload(backend, w, t, c, f)).ToList());
            var output = Upload(backend, residual, t, n, c);
            var (ids, weights) = MoeDeviceOps.Run(backend, experts, Upload(backend, z, t, n, e), Upload(backend, x, t, n, c), output, k, normalize,
                DType.F32, shared ? Upload(backend, sharedOut, t, n, c) : null, shared ? Upload(backend, gate, t, n, 1) : null);
            return (backend.ToArray<int>(ids), Download(backend, weights), Download(backend, output));
        }

        var (cpuIds, cpuWeights, cpuOut) = Run(_cpu, DType.F32);
        var (gpuIds, gpuWeights, gpuOut) = Run(gpu, dtype);
        Assert.True(cpuIds.SequenceEqual(gpuIds), $"seed {seed}: the GPU's experts [{string.Join(",", gpuIds)}], the CPU's [{string.Join(",", cpuIds)}]");
        Assert.Equal(Enumerable.Range(0, k), gpuIds.Take(k));
        for (int i = 0; i < cpuWeights.Length; i++)
            Assert.True(Math.Abs(gpuWeights[i] - cpuWeights[i]) <= 2e-6 * Math.Abs(cpuWeights[i]), $"seed {seed}: weight {i} {gpuWeights[i]} vs {cpuWeights[i]}");
        AssertClose(cpuOut, gpuOut, dtype == DType.BF16 ? 2e-2 : 1e-5, $"seed {seed}: the MoE output ({dtype})");
    }

    /// <summary>
    /// The expert ops over quantized experts (moe.cu's <c>_q8_</c> and <c>_q4_</c> kernels: int8 with a scale a row, int4 in
    /// groups of 16 or 32, one group of C = 40 short) on the GPU against the CPU backend's over the same quantized weights
    /// (quantized once on the host, so both hold the same integers): the output within 1e-5 (F32 rows) or 2e-2 (BF16 rows,
    /// as above) of its largest value. The weights are dequantized in F32 on the GPU, in F64 on the CPU: an F32 rounding each.
    /// </summary>
    [Theory]
    [InlineData(13, 6, 2, 64, 48, 0, DType.F32)]
    [InlineData(1, 8, 2, 40, 96, 0, DType.BF16)]
    [InlineData(13, 6, 2, 64, 48, 16, DType.F32)]
    [InlineData(64, 8, 2, 40, 200, 32, DType.F32)]
    [InlineData(9, 4, 4, 128, 64, 32, DType.BF16)]
    public void QuantizedExpertOpsOnTheGpuMatchTheCpuBackend(int n, int e, int k, int c, int f, int int4Group, DType dtype)
    {
        var gpu = Gpu;
        int seed = 191 + n + e + k + int4Group;
        var rng = new Random(seed);
        double[] Draw(int count, double scale) => Stored(Enumerable.Range(0, count).Select(_ => scale * (rng.NextDouble() * 2 - 1)).ToArray(), dtype);
        float[] Floats(int count, double scale) => Enumerable.Range(0, count).Select(_ => (float)(scale * (rng.NextDouble() * 2 - 1))).ToArray();
        var z = Draw(n * e, 3);
        var x = Draw(n * c, 1);
        var residual = Draw(n * c, 1);
        var wg = Enumerable.Range(0, e).Select(_ => Floats(f * c, 2 / Math.Sqrt(c))).ToArray();
        var wu = Enumerable.Range(0, e).Select(_ => Floats(f * c, 2 / Math.Sqrt(c))).ToArray();
        var wd = Enumerable.Range(0, e).Select(_ => Floats(c * f, 2 / Math.Sqrt(f))).ToArray();
        QuantizedWeight Quantize(IBackend b, float[] w, int rows, int cols) => int4Group == 0
            ? Int8Quantization.Quantize(b, w, rows, cols) : Int4Quantization.Quantize(b, w, rows, cols, int4Group);

        double[] Run(IBackend backend, DType t)
        {
            var experts = backend.PrepareMoeExperts(wg.Select(w => Quantize(backend, w, f, c)).ToList(), wu.Select(w => Quantize(backend, w, f, c)).ToList(),
                wd.Select(w => Quantize(backend, w, c, f)).ToList());
            Assert.Equal(int4Group > 0, experts.IsInt4);
            Assert.Equal(backend == _cpu, experts.TakesRows(DType.F64));      // CUDA's expert kernels: F32, BF16 and F16 rows
            var output = Upload(backend, residual, t, n, c);
            MoeDeviceOps.Run(backend, experts, Upload(backend, z, t, n, e), Upload(backend, x, t, n, c), output, k, normalize: true, DType.F32);
            return Download(backend, output);
        }

        AssertClose(Run(_cpu, DType.F32), Run(gpu, dtype), dtype == DType.BF16 ? 2e-2 : 1e-5,
            $"seed {seed}: the MoE output over {(int4Group > 0 ? $"int4 (groups of {int4Group})" : "int8")} experts ({dtype})");
    }

    /// <summary>
    /// The experts' tensor-core products (moe.cu's <c>moe_gemm_*</c>, <see cref="CudaBackendOptions.MoeExpertTensorCores"/>):
    /// BF16 rows over BF16 experts (<paramref name="int4Group"/> -1), int8 (0) or int4 experts in groups of 64 or 128, C and F
    /// multiples of 64, on the GPU against the CPU backend's ops over the same weights (quantized alike on both), the output
    /// within 2e-2 of its largest value (the BF16 bound above: hidden activations and expert outputs rounded to 8 bits), with
    /// the option on (the profiler must name <c>moe_gemm_swiglu_*</c> and <c>moe_gemm_down_*</c>, and the prepared experts say
    /// <see cref="MoeExpertWeights.AtWeightBandwidth"/>) and off (<c>moe_expert_*</c>, and they do not).
    /// Rows an expert: 1-2, about 4 and 16 (x's 16-row tiles), 64 (two experts taking all 64 rows: the 64-row tiles), 100 (one
    /// expert: a chunk of 64 then one of 36), about 256 and 150 (prefill-size steps: several chunks an expert), and the largest
    /// step the device path takes (4,096 rows, 128 experts, top 8: 32,768 pairs through the one-CTA alignment); slices of K
    /// where the grid is small (one row, eight experts).
    /// </summary>
    [Theory]
    [InlineData(1, 8, 2, 128, 192, -1)]
    [InlineData(16, 8, 2, 256, 128, -1)]
    [InlineData(64, 2, 2, 128, 256, -1)]
    [InlineData(100, 1, 1, 64, 128, -1)]
    [InlineData(24, 6, 2, 128, 128, 0)]
    [InlineData(64, 8, 2, 256, 128, 128)]
    [InlineData(5, 4, 2, 192, 64, 64)]
    [InlineData(1024, 16, 4, 128, 192, -1)]
    [InlineData(600, 8, 2, 128, 128, 128)]
    [InlineData(4096, 128, 8, 128, 128, -1)]
    public void TensorCoreExpertOpsOnTheGpuMatchTheCpuBackend(int n, int e, int k, int c, int f, int int4Group)
    {
        var gpu = Gpu;
        const DType dtype = DType.BF16;
        int seed = 291 + n + e + k + c + int4Group;
        var rng = new Random(seed);
        double[] Draw(int count, double scale) => Stored(Enumerable.Range(0, count).Select(_ => scale * (rng.NextDouble() * 2 - 1)).ToArray(), dtype);
        var z = Draw(n * e, 3);
        var x = Draw(n * c, 1);
        var residual = Draw(n * c, 1);
        var wg = Enumerable.Range(0, e).Select(_ => Draw(f * c, 2 / Math.Sqrt(c))).ToArray();
        var wu = Enumerable.Range(0, e).Select(_ => Draw(f * c, 2 / Math.Sqrt(c))).ToArray();
        var wd = Enumerable.Range(0, e).Select(_ => Draw(c * f, 2 / Math.Sqrt(f))).ToArray();
        MoeExpertWeights Prepare(IBackend b, DType t)
        {
            if (int4Group < 0)
                return b.PrepareMoeExperts(wg.Select(w => Upload(b, w, t, f, c)).ToList(), wu.Select(w => Upload(b, w, t, f, c)).ToList(),
                    wd.Select(w => Upload(b, w, t, c, f)).ToList());
            QuantizedWeight Quantize(double[] w, int rows, int cols)
            {
                var floats = w.Select(v => (float)v).ToArray();
                return int4Group == 0 ? Int8Quantization.Quantize(b, floats, rows, cols) : Int4Quantization.Quantize(b, floats, rows, cols, int4Group);
            }
            return b.PrepareMoeExperts(wg.Select(w => Quantize(w, f, c)).ToList(), wu.Select(w => Quantize(w, f, c)).ToList(),
                wd.Select(w => Quantize(w, c, f)).ToList());
        }
        double[] Run(IBackend backend, DType t, bool? atBandwidth = null)
        {
            var experts = Prepare(backend, t);
            if (atBandwidth is { } b) Assert.Equal(b, experts.AtWeightBandwidth(t));
            var output = Upload(backend, residual, t, n, c);
            MoeDeviceOps.Run(backend, experts, Upload(backend, z, t, n, e), Upload(backend, x, t, n, c), output, k, normalize: true, DType.F32);
            return Download(backend, output);
        }

        var expected = Run(_cpu, DType.F32);
        string form = int4Group < 0 ? "bf16" : int4Group == 0 ? "q8_bf16" : "q4_bf16";
        foreach (bool tensorCores in new[] { true, false })
        {
            using var backend = new CudaBackend(gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { ProfileOps = true, MoeExpertTensorCores = tensorCores });
            backend.Profiler!.Reset();
            bool expectGemm = tensorCores && gpu.CudaDevice.ComputeCapability.Major >= 9;
            var got = Run(backend, dtype, atBandwidth: expectGemm);
            var names = backend.Profiler!.Totals().Select(r => r.Name).ToList();
            foreach (var product in new[] { "swiglu", "down" })
                Assert.Contains($"{(expectGemm ? "moe_gemm" : "moe_expert")}_{product}_{form}", names);
            AssertClose(expected, got, 2e-2, $"seed {seed}: the MoE output over {form} experts, tensor cores {tensorCores}");
        }
    }

    /// <summary>
    /// Experts wider than <see cref="SparseMoeFeedForward.DeviceRoutingMaxExpertWeights"/> (set one weight below their size) take
    /// the device path where the backend runs their products on tensor cores (<see cref="MoeExpertWeights.AtWeightBandwidth"/>:
    /// BF16, C 64 and F 128, compute capability 9.0) and the host path with <see cref="CudaBackendOptions.MoeExpertTensorCores"/>
    /// off: <see cref="Transformer.RoutesExpertsOnDevice"/> says so and a decode step's device-path counter moves (or not).
    /// </summary>
    [Fact]
    public void WideExpertsRouteOnTheDeviceOnlyWhereTheirProductsRunOnTensorCores()
    {
        var gpu = Gpu;
        var config = ModelPresets.Get("mixtral-debug") with { Embedding = 64, Hidden = 128 };
        foreach (bool tensorCores in new[] { true, false })
        {
            using var backend = new CudaBackend(gpu.CudaDevice.Ordinal, gpu.Options with { MoeExpertTensorCores = tensorCores });
            var model = new Transformer(config, backend, DType.BF16);
            Tessera.Training.Benchmarks.BenchmarkWeights.Initialize(model, seed: 4);
            var layers = model.Blocks.Select(b => b.Mlp).OfType<SparseMoeFeedForward>().ToList();
            foreach (var l in layers) l.DeviceRoutingMaxExpertWeights = l.Experts[0].Gate.Weight.Shape.NumElements - 1;
            bool expected = tensorCores && gpu.CudaDevice.ComputeCapability.Major >= 9;
            Assert.Equal(expected, model.RoutesExpertsOnDevice(1));
            var cache = model.CreateKvCache(1);
            model.ForwardWithCache(backend.FromArray(new[] { 3, 14, 15 }, 1, 3), cache);
            long before = layers.Sum(l => l.DeviceRoutedForwards);
            model.ForwardWithCache(backend.FromArray(new[] { 9 }, 1, 1), cache);
            Assert.Equal(expected ? layers.Count : 0, layers.Sum(l => l.DeviceRoutedForwards) - before);
        }
    }

    /// <summary>
    /// A prefill of 1,100 rows over fine-grained experts on tensor cores (BF16, 64 experts of C 64 x F 128, top 8: well under
    /// <see cref="SparseMoeFeedForward.DeviceRoutingMaxExpertWeights"/>, about 137 rows an expert, so three 64-row chunks)
    /// takes the device path by default (<see cref="SparseMoeFeedForward.DefaultRowBound"/>), and the same experts counted as
    /// wide (the width bound one weight below their size) keep the host routing past 64 rows. Both give the host path's
    /// logits within 3e-2 relative (the two paths round the BF16 hidden activations and expert outputs, 4e-3 each, at
    /// different points, through two layers: the expert ops' own 2e-2 and a little more for the second layer).
    /// </summary>
    [Fact]
    public void FineGrainedExpertsOnTensorCoresTakePrefillStepsOnTheDevice()
    {
        var gpu = Gpu;
        if (gpu.CudaDevice.ComputeCapability.Major < 9) Assert.Skip("the tensor-core expert products need compute capability 9.0");
        if (!gpu.Options.MoeExpertTensorCores) Assert.Skip("the fixture's backend has MoeExpertTensorCores off");
        var config = ModelPresets.Get("mixtral-debug") with
        {
            Embedding = 64, Hidden = 128, Experts = 64, ExpertsPerToken = 8, MaxSequenceLength = 1152,
        };
        var model = new Transformer(config, gpu, DType.BF16);
        Tessera.Training.Benchmarks.BenchmarkWeights.Initialize(model, seed: 6);
        var layers = model.Blocks.Select(b => b.Mlp).OfType<SparseMoeFeedForward>().ToList();
        var rng = new Random(6);
        var prompt = Enumerable.Range(0, 1100).Select(_ => rng.Next(config.VocabSize)).ToArray();
        double[] Prefill(out long routed)
        {
            var cache = model.CreateKvCache(1);
            long before = layers.Sum(l => l.DeviceRoutedForwards);
            var logits = model.ForwardWithCache(gpu.FromArray(prompt, 1, prompt.Length), cache);
            routed = layers.Sum(l => l.DeviceRoutedForwards) - before;
            return Download(gpu, logits);
        }
        Assert.Equal(SparseMoeFeedForward.DefaultNarrowExpertDeviceRoutingMaxRows, model.ExpertDeviceRowBound());
        Assert.True(model.RoutesExpertsOnDevice(prompt.Length), "fine-grained experts on tensor cores: a 1,100-row step is for the device path");
        var device = Prefill(out long onDevice);
        Assert.Equal(layers.Count, onDevice);
        foreach (var l in layers) l.DeviceRoutingMaxExpertWeights = l.Experts[0].Gate.Weight.Shape.NumElements - 1;
        Assert.Equal(SparseMoeFeedForward.DefaultDeviceRoutingMaxRows, model.ExpertDeviceRowBound());
        Assert.False(model.RoutesExpertsOnDevice(prompt.Length), "wide experts: past 64 rows the host routes");
        Assert.True(model.RoutesExpertsOnDevice(SparseMoeFeedForward.DefaultDeviceRoutingMaxRows));
        foreach (var l in layers) l.DeviceRouting = false;
        Assert.Equal(0, model.ExpertDeviceRowBound());
        var host = Prefill(out long none);
        Assert.Equal(0, none);
        AssertClose(host, device, 3e-2, "a 1,100-row prefill's logits, device path against the host path (seed 6)");
    }

    /// <summary>
    /// A mixtral-debug model with int8 or int4 (groups of 16) weights on the GPU (F32, the same O(0.3) random weights written
    /// through the quantizing storage on both backends): its greedy tokens equal the CPU's quantized model's, its decode steps
    /// route the quantized experts on the device and are recorded as a graph.
    /// </summary>
    [Theory]
    [InlineData(WeightQuantization.Int8)]
    [InlineData(WeightQuantization.Int4)]
    public void QuantizedExpertsDecodeOnTheDeviceAndAreRecorded(WeightQuantization quantization)
    {
        var gpu = Gpu;
        var config = ModelPresets.Get("mixtral-debug");
        Transformer Build(IBackend backend)
        {
            var model = PretrainedModel.Quantized(config, backend, DType.F32, quantization: quantization, int4GroupSize: 16);
            var rng = new Random(9);
            foreach (var p in model.Layout.Parameters)
            {
                double mean = p.Name.EndsWith(".weight", StringComparison.Ordinal) && !p.WeightDecay ? 1.0 : 0.0;
                var values = TestTensors.Normal(rng, p.NumElements, 0.3, mean).Select(v => (float)v).ToArray();
                p.WriteMasterOrValue(t => backend.CopyFromHost<float>(values, t));
            }
            return model;
        }
        var onCpu = Build(_cpu);
        var onGpu = Build(gpu);
        int[] prompt = [5, 1, 4, 1, 5, 9, 2, 6];
        const int count = 20;
        var generator = new TextGenerator(onGpu);
        Assert.Equal(TextGeneratorTests.Reference(onCpu, _cpu, prompt, count, SamplingOptions.Greedy),
            generator.Generate(prompt, new GenerationOptions { MaxNewTokens = count }).ToList());
        Assert.True(generator.LastRunRecorded, $"a decode step over {quantization} experts routes on the device and should be recorded");
        Assert.True(onGpu.Blocks.Select(b => b.Mlp).OfType<Tessera.Nn.Layers.SparseMoeFeedForward>().All(l => l.DeviceRoutedForwards > 0),
            "a layer did not take the device path");
    }

    /// <summary>
    /// A paged-serving decode step of a mixture-of-experts model is recorded as a graph (the runner records buckets and
    /// replays them) and its tokens equal the eager runner's, step for step (F32 on the GPU, greedy; the same kernels in the
    /// same order, so the replay is bit for bit the eager step and the tokens equal exactly).
    /// </summary>
    [Theory]
    [InlineData("mixtral-debug")]
    [InlineData("qwen2-moe-debug")]
    public void PagedDecodeStepsOfAMixtureOfExpertsAreRecordedAndGiveTheEagerTokens(string preset)
    {
        var (config, _, onGpu, _) = RandomModelOnBoth(preset, DType.F32);
        int[][] prompts = [[5, 1, 4, 1, 5, 9], [7], [3, 3, 3]];
        const int newTokens = 12;
        (List<int>[] Tokens, long Replayed, int Graphs) Serve(bool record)
        {
            using var cache = new PagedKvCache(Gpu, DType.F32, config.Layers, config.EffectiveKvHeads, config.HeadSize,
                new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 64 * PagedKvCache.BlockBytes(DType.F32, config.Layers, config.EffectiveKvHeads, config.HeadSize, 4) });
            var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 4, TokenBudget = 16 });
            using var runner = new PagedModelRunner(onGpu, cache, 16, 4, config.MaxSequenceLength, recordGraphs: record);
            var sequences = prompts.Select((p, i) => new Sequence(i, p, p.Length + newTokens)).ToList();
            foreach (var s in sequences) scheduler.Add(s);
            while (!scheduler.IsIdle)
            {
                var step = scheduler.Schedule();
                runner.Run(step, withLogits: false, out var greedy, out _);
                scheduler.Complete(step);
                int m = 0;
                foreach (var s in step.Sequences.Where(s => s.Samples))
                {
                    s.Sequence.Append(greedy[m++]);
                    if (s.Sequence.GeneratedCount == newTokens) scheduler.Finish(s.Sequence);
                }
            }
            return (sequences.Select((s, i) => s.Tokens.Skip(prompts[i].Length).ToList()).ToArray(), runner.ReplayedSteps, runner.RecordedGraphs);
        }
        var eager = Serve(record: false);
        var recorded = Serve(record: true);
        Assert.Equal(0L, eager.Replayed);
        Assert.True(recorded.Graphs > 0 && recorded.Replayed > 0, $"{preset}: {recorded.Graphs} graphs recorded, {recorded.Replayed} steps replayed");
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(eager.Tokens[i], recorded.Tokens[i]);

        // Dense decoding too: the recorded DecodeStep gives the eager one's tokens.
        var generator = new TextGenerator(onGpu);
        var withGraph = generator.Generate(prompts[0], new GenerationOptions { MaxNewTokens = newTokens }).ToList();
        Assert.True(generator.LastRunRecorded);
        Assert.Equal(generator.Generate(prompts[0], new GenerationOptions { MaxNewTokens = newTokens, CaptureGraph = false }).ToList(), withGraph);
    }
}
