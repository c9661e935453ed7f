using Tessera.Cuda;
using Tessera.Inference;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Tokenization;
using Tessera.Nn.Quantization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Inference.Serving;
using Tessera.Tests.Models.Quantization;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Models with int4 weights (<see cref="WeightQuantization.Int4"/>) on the GPU against the same model with int4 weights on the
/// CPU: both quantize the same F32 weights on the host, so they hold the same packed words, scales and zeros, and in F32
/// (every product within 1e-5 of the CPU's) greedy decoding picks the same tokens, through <see cref="TextGenerator"/> (one
/// row: <c>gemv_stream_int4</c>, with the norm staged, where K and the group are multiples of 32, else <c>gemv_int4</c>;
/// recorded and eager) and through the serving engine (batches of 1 to 8 rows: the matrix-vector kernels, then in F32 the
/// dequantized product, in BF16 the int4 decode product where K is a multiple of 64, <c>decode_gemm_int4g</c> or
/// <c>decode_gemm_int4</c> by the group; recorded per bucket). In BF16 the recorded and the eager decode agree token for token, and a Llama
/// decode step launches the int4 stream's SwiGLU and ROPE forms (session 33, not yet run on a GPU). Passed on an H100 with each
/// generation of the int4 kernels (sessions 31 and 32) and on an H200 (session 32).
/// </summary>
[Collection("cuda")]
public sealed class CudaInt4QuantizedModelTests : CudaTestBase, IDisposable
{
    private readonly CpuBackend _cpu = new(2);
    private readonly SavedDebugModels _models;

    public CudaInt4QuantizedModelTests(CudaFixture fixture) : base(fixture) => _models = new SavedDebugModels(_cpu, "tessera-cuda-int4-");

    public void Dispose() => _models.Dispose();

    /// <summary>A random <paramref name="preset"/> model (byte vocabulary, seed 9, F32) saved as a Hugging Face directory.</summary>
    private string Saved(string preset) =>
        _models.Save(preset, DType.F32, c => c with { VocabSize = 256, MaxSequenceLength = 64 }, seed: 9).Directory;

    [Theory]
    [InlineData("llama-debug")]
    [InlineData("gpt2-debug")]
    public void GreedyGenerationWithInt4WeightsOnTheGpuMatchesTheCpu(string preset)
    {
        var dir = Saved(preset);
        var onCpu = PretrainedModel.Load(dir, _cpu, DType.F32, quantization: WeightQuantization.Int4);
        var onGpu = PretrainedModel.Load(dir, Gpu, DType.F32, quantization: WeightQuantization.Int4);
        var name = onCpu.Layout.Parameters.First(onCpu.IsInt4Quantizable).Name;
        var (c, g) = (onCpu.Layout[name].Quantized!, onGpu.Layout[name].Quantized!);
        Assert.Equal(_cpu.ToArray<int>(c.Values), Gpu.ToArray<int>(g.Values));
        Assert.Equal(_cpu.ToArray<float>(c.Scales), Gpu.ToArray<float>(g.Scales));
        Assert.Equal(_cpu.ToArray<sbyte>(c.Zeros!), Gpu.ToArray<sbyte>(g.Zeros!));

        int[] prompt = [5, 1, 4, 1, 5, 9, 2, 6];
        int count = onCpu.Config.MaxSequenceLength - prompt.Length - 1;
        var expected = new TextGenerator(onCpu).Generate(prompt, new GenerationOptions { MaxNewTokens = count }).ToList();
        var generator = new TextGenerator(onGpu);
        var recorded = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = count }).ToList();
        Assert.True(generator.LastRunRecorded, "the decode step should replay a CUDA graph");
        var eager = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = count, CaptureGraph = false }).ToList();
        Assert.Equal(expected, recorded);
        Assert.Equal(expected, eager);

        var bf16 = PretrainedModel.Load(dir, Gpu, DType.BF16, quantization: WeightQuantization.Int4);
        var g16 = new TextGenerator(bf16);
        Assert.Equal(g16.Generate(prompt, new GenerationOptions { MaxNewTokens = count, CaptureGraph = false }),
            g16.Generate(prompt, new GenerationOptions { MaxNewTokens = count }));

        if (preset != "llama-debug") return;
        // A Llama decode step's int4 layers take the fused ops: the stream's SwiGLU form for gate and up, its ROPE form for the
        // QKV product with the rotation and the append (one launch each, as the 16-bit layers' ops).
        using var profiled = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { ProfileOps = true });
        var model = PretrainedModel.Load(dir, profiled, DType.BF16, quantization: WeightQuantization.Int4);
        _ = new TextGenerator(model).Generate(prompt, new GenerationOptions { MaxNewTokens = 4, CaptureGraph = false }).ToList();
        var names = profiled.Profiler!.Totals().Select(r => r.Name).ToList();
        Assert.Contains("gemv_stream_int4_swiglu_bf16_m1", names);
        Assert.Contains("gemv_stream_int4_rope_bf16_m1", names);
    }

    [Theory]
    [InlineData("llama-debug")]
    [InlineData("gpt2-debug")]
    public async Task ServingWithInt4WeightsOnTheGpuMatchesOneSequenceAtATimeOnTheCpu(string preset)
    {
        var dir = Saved(preset);
        var onCpu = PretrainedModel.Load(dir, _cpu, DType.F32, quantization: WeightQuantization.Int4);
        var onGpu = PretrainedModel.Load(dir, Gpu, DType.F32, quantization: WeightQuantization.Int4);
        var prompts = Enumerable.Range(0, 8).Select(i => Enumerable.Range(0, 1 + 39 * i / 7).Select(j => (i * 37 + j * 11) % 256).ToArray()).ToArray();
        const int tokens = 20;
        var expected = prompts.Select(p => new TextGenerator(onCpu).Generate(p, new GenerationOptions { MaxNewTokens = tokens }).ToList()).ToList();
        using var engine = new InferenceEngine(onGpu, new ByteTokenizer(), new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = 8 << 20 },
            Scheduler = new SchedulerOptions { MaxBatch = 8, TokenBudget = 64 },
            RecordGraphs = true,
        });
        var results = await EngineRequests.RunAll(engine, prompts, tokens);
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], results[i]);
        Assert.True(engine.ReplayedSteps > 0, "no decode step replayed a recorded graph");
        Assert.Equal(0, engine.Metrics.KvBlocksInUse);
    }
}
