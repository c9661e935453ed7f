using Tessera.Cuda;
using Tessera.Inference;
using Tessera.Inference.Sampling;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Inference;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// <see cref="CudaBackend.FeedForwardSwiGlu"/> under <see cref="CudaBackendOptions.FusedFeedForward"/>: a decode step's MLP as
/// one persistent launch (gemv.cu's <c>gemv_mlp_*</c>: the gate/up stream, a grid barrier, the down stream). It must give the
/// bits of the two launches it replaces (the same sums in the same order), replay from a recorded graph (its barrier words
/// zero again after each launch), and leave greedy generation's tokens as they were.
/// </summary>
[Collection("cuda")]
public sealed class CudaFeedForwardTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    private readonly CpuBackend _cpu = new(2);

    private static string Suffix(DType dtype) => dtype switch { DType.BF16 => "bf16", DType.F16 => "f16", _ => "f32" };

    /// <summary>
    /// The fused launch against the two launches (bit for bit, inside an inference scope, so with programmatic dependent
    /// launch and the first weights loaded early), against a profiled backend (which names the kernel it ran and launches
    /// without the dependency), and against the CPU: hidden against the CPU's MatMulSwiGlu in F64 on the same rounded
    /// inputs, the residual against the CPU's down product in F64 from the GPU's own hidden, each within
    /// <see cref="CudaTestBase.Tolerance"/> (one rounding of the output: f32 1e-5, 16-bit 1e-2).
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 1, 2048, 8192, true, false, true)]    // llama-1b's MLP at one row, in place on the residual
    [InlineData(DType.BF16, 4, 1024, 2816, true, true, false)]    // four rows, biases, the sum into another tensor
    [InlineData(DType.F32, 2, 1000, 300, false, true, true)]      // no norm; fewer gate/up outputs than warps in the grid
    [InlineData(DType.F16, 3, 4096, 1032, true, false, true)]     // two units of loads a gate/up row
    public void FusedFeedForwardGivesTheTwoLaunchesBitsAndTheCpusValues(DType dtype, int m, int c, int f, bool withNorm, bool withBias, bool inPlace)
    {
        const double eps = 1e-5;
        double[] Values(int count, double scale) => Stored(Enumerable.Range(0, count).Select(_ => (Rng.NextDouble() * 2 - 1) * scale).ToArray(), dtype);
        double[] xv = Values(m * c, 1), gv = Values(f * c, 0.1), uv = Values(f * c, 0.1), dv = Values(c * f, 0.05), bgv = Values(f, 0.5),
            buv = Values(f, 0.5), bdv = Values(c, 0.5), nwv = Values(c, 1), yv = Values(m * c, 1);
        (double[] Hidden, double[] Residual) Run(CudaBackend backend)
        {
            var x = Upload(backend, xv, dtype, m, c);
            var residual = inPlace ? x : Upload(backend, yv, dtype, m, c);
            var hidden = backend.Allocate(new Shape(m, f), dtype);
            Tensor? Bias(double[] v, int n) => withBias ? Upload(backend, v, dtype, n) : null;
            RmsNormPrologue? norm = withNorm ? new RmsNormPrologue(Upload(backend, nwv, dtype, c), eps) : null;
            var (wg, wu, wd) = (Upload(backend, gv, dtype, f, c), Upload(backend, uv, dtype, f, c), Upload(backend, dv, dtype, c, f));
            var (bg, bu, bd) = (Bias(bgv, f), Bias(buv, f), Bias(bdv, c));
            using (backend.EnterInference())
            {
                backend.Fill(hidden, double.NaN);                                  // a launch in the scope, as a step's
                backend.FeedForwardSwiGlu(x, norm, wg, wu, wd, hidden, residual, bg, bu, bd);
            }
            return (Download(backend, hidden), Download(backend, residual));
        }
        using var fused = new CudaBackend(Gpu.CudaDevice.Ordinal, Gpu.Options with { FusedFeedForward = true });
        using var separate = new CudaBackend(Gpu.CudaDevice.Ordinal, Gpu.Options with { FusedFeedForward = false });
        var actual = Run(fused);
        var expected = Run(separate);
        Assert.Equal(expected.Hidden, actual.Hidden);
        Assert.Equal(expected.Residual, actual.Residual);
        using (var profiled = new CudaBackend(Gpu.CudaDevice.Ordinal, Gpu.Options with { FusedFeedForward = true, ProfileOps = true }))
        {
            var again = Run(profiled);
            Assert.Equal(actual.Hidden, again.Hidden);
            Assert.Equal(actual.Residual, again.Residual);
            var kernels = profiled.Profiler!.Totals().Select(r => r.Name).ToList();
            Assert.Contains($"gemv_mlp_{Suffix(dtype)}_m{m}", kernels);
            Assert.DoesNotContain(kernels, k => k.StartsWith("gemv_stream", StringComparison.Ordinal));
        }

        Tensor Cpu(double[] v, params int[] dims) => TestTensors.FromDoubles(_cpu, v, DType.F64, dims);
        var cpuHidden = _cpu.Allocate(new Shape(m, f), DType.F64);
        _cpu.MatMulSwiGlu(Cpu(xv, m, c), Cpu(gv, f, c), Cpu(uv, f, c), cpuHidden, withBias ? Cpu(bgv, f) : null, withBias ? Cpu(buv, f) : null,
            withNorm ? new RmsNormPrologue(Cpu(nwv, c), eps) : null);
        AssertClose(TestTensors.ToDoubles(_cpu, cpuHidden), actual.Hidden, Tolerance(dtype), $"FeedForwardSwiGlu {dtype} M={m}: hidden");
        var cpuResidual = Cpu(inPlace ? xv : yv, m, c);
        _cpu.MatMul(Cpu(actual.Hidden, m, f), Cpu(dv, c, f), cpuResidual, transposeB: true, beta: 1.0, bias: withBias ? Cpu(bdv, c) : null);
        AssertClose(TestTensors.ToDoubles(_cpu, cpuResidual), actual.Residual, Tolerance(dtype), $"FeedForwardSwiGlu {dtype} M={m}: residual");
    }

    /// <summary>
    /// The fused MLP recorded into a CUDA graph and replayed: once eagerly, then three replays, each adding the MLP of the
    /// residual to itself in place, give the bits of four eager applications of the two separate launches. A barrier that
    /// did not return its words to zero would hang or let a replay's CTAs pass early.
    /// </summary>
    [Fact]
    public void RecordedFusedFeedForwardReplaysAsTheSeparateLaunchesRun()
    {
        int m = 1, c = 2048, f = 5632;
        double[] Values(int count, double scale) => Stored(Enumerable.Range(0, count).Select(_ => (Rng.NextDouble() * 2 - 1) * scale).ToArray(), DType.BF16);
        double[] xv = Values(m * c, 1), gv = Values(f * c, 0.05), uv = Values(f * c, 0.05), dv = Values(c * f, 0.02), nwv = Values(c, 1);
        double[] Run(CudaBackend backend, bool record)
        {
            var x = Upload(backend, xv, DType.BF16, m, c);
            var hidden = backend.Allocate(new Shape(m, f), DType.BF16);
            var norm = new RmsNormPrologue(Upload(backend, nwv, DType.BF16, c), 1e-5);
            var (wg, wu, wd) = (Upload(backend, gv, DType.BF16, f, c), Upload(backend, uv, DType.BF16, f, c), Upload(backend, dv, DType.BF16, c, f));
            using (backend.EnterInference())
            {
                void Step() => backend.FeedForwardSwiGlu(x, norm, wg, wu, wd, hidden, x);
                Step();
                if (record)
                {
                    using var graph = backend.Capture(Step);
                    Assert.NotNull(graph);
                    for (int i = 0; i < 3; i++) graph!.Replay();
                }
                else for (int i = 0; i < 3; i++) Step();
            }
            return Download(backend, x);
        }
        using var fused = new CudaBackend(Gpu.CudaDevice.Ordinal, Gpu.Options with { FusedFeedForward = true });
        using var separate = new CudaBackend(Gpu.CudaDevice.Ordinal, Gpu.Options with { FusedFeedForward = false });
        var expected = Run(separate, record: false);
        Assert.NotEqual(xv, expected);
        Assert.Equal(expected, Run(fused, record: true));
    }

    /// <summary>
    /// Greedy generation with the fused MLP in every decode step (recorded, as <see cref="TextGenerator"/> runs it): in F32 the
    /// CPU reference's tokens, in BF16 the tokens of the same weights without the fusion.
    /// </summary>
    [Fact]
    public void GreedyGenerationWithTheFusedMlpKeepsItsTokens()
    {
        var config = ModelPresets.Get("llama-debug");
        var onCpu = new Transformer(config, _cpu, DType.F32);
        Tessera.Tests.Nn.LayerCheck.Randomize(_cpu, onCpu.Parameters, new Random(9));
        var weights = _cpu.ToArray<float>(onCpu.Parameters.Values);
        int[] prompt = [5, 1, 4, 1, 5, 9, 2, 6];
        int count = config.MaxSequenceLength - prompt.Length - 1;
        using var fused = new CudaBackend(Gpu.CudaDevice.Ordinal, Gpu.Options with { FusedFeedForward = true });
        using var separate = new CudaBackend(Gpu.CudaDevice.Ordinal, Gpu.Options with { FusedFeedForward = false });
        List<int> Generate(CudaBackend backend, DType dtype)
        {
            var model = new Transformer(config, backend, dtype);
            if (dtype == DType.F32) backend.CopyFromHost<float>(weights, model.Parameters.Values);
            else
            {
                backend.CopyFromHost<float>(weights, model.Parameters.Masters!);
                model.Parameters.SyncValuesFromMasters();
            }
            var generator = new TextGenerator(model);
            var tokens = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = count }).ToList();
            Assert.True(generator.LastRunRecorded, "the decode step should replay a CUDA graph");
            return tokens;
        }
        Assert.Equal(TextGeneratorTests.Reference(onCpu, _cpu, prompt, count, SamplingOptions.Greedy), Generate(fused, DType.F32));
        Assert.Equal(Generate(separate, DType.BF16), Generate(fused, DType.BF16));
    }
}
