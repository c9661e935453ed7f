using Tessera.Inference;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Inference.Sampling;
using Tessera.Models;
using Tessera.Models.Tokenization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Inference;
using Tessera.Tests.Inference.Serving;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Mixture-of-experts models on the GPU (routing on the host, experts through the row gather, a batched K = 1 product and
/// the row scatter-add): gradients and greedy tokens against the CPU, decode steps never recorded into a graph, and BF16
/// through the F32 staging of the router's logits. Skipped without a CUDA device.
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
    public async Task GreedyTokensOnTheGpuMatchTheCpuAndNoStepIsRecorded(string preset)
    {
        var (config, onCpu, onGpu, weights) = RandomModelOnBoth(preset, DType.F32);
        int[] prompt = [5, 1, 4, 1, 5, 9, 2, 6];
        const int count = 20;
        var expected = TextGeneratorTests.Reference(onCpu, _cpu, prompt, count, SamplingOptions.Greedy);
        var generator = new TextGenerator(onGpu);
        Assert.Equal(expected, generator.Generate(prompt, new GenerationOptions { MaxNewTokens = count }).ToList());
        Assert.False(generator.LastRunRecorded, "a mixture-of-experts decode step routes on the host and must run eagerly");

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
            Assert.Equal(0L, engine.ReplayedSteps);
        }

        // BF16: the router's logits and weights go through the F32 staging buffers; the tokens are in the vocabulary.
        var bf16 = new Transformer(config, Gpu, DType.BF16);
        Gpu.CopyFromHost<float>(weights, bf16.Parameters.Masters!);
        bf16.Parameters.SyncValuesFromMasters();
        Assert.All(new TextGenerator(bf16).Generate(prompt, new GenerationOptions { MaxNewTokens = count }), t => Assert.InRange(t, 0, config.VocabSize - 1));
    }
}
