using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Optim;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Cuda.Training;

/// <summary>
/// The same F32 training step on the CUDA backend and on the CPU backend, from the same weights and tokens:
/// loss and gradient norm agree within 1e-4 relative. Both sides compute in F32
/// (cuBLASLt with TF32 off); they differ only in summation order, which moves a 124M-parameter sum of squares
/// by ~1e-6 relative, so 1e-4 leaves two orders of margin and still catches any wrong kernel (errors there are
/// 1e-2 and up).
/// </summary>
[Collection("cuda")]
public sealed class GpuCpuTrainingStepTests(CudaFixture fixture)
{
    private const double Tolerance = 1e-4;

    /// <summary>
    /// Preset, batch, sequence, layer and vocabulary overrides. The llama-1b case keeps the preset's width (2048), heads
    /// (32 query, 8 kv), MLP (8192) and RoPE but 1 of its 16 layers, 16 positions and 8192 of its 128256 vocabulary rows:
    /// the CPU backend's matrix products with a small M and a large K run at ~0.1 GFLOP/s (dx = dLogits @ W of gpt2-124m
    /// alone takes ~40 s; the whole gpt2-124m case 150 s on the 16-core GPU machine, a 4-layer llama-1b over 90 s), and the
    /// per-layer shapes are what the GPU kernels must get right.
    /// </summary>
    public static TheoryData<string, int, int, int, int> Cases => new()
    {
        { "gpt2-124m", 2, 64, 0, 0 },
        { "llama-debug", 2, 32, 0, 0 },
        { "llama-1b", 1, 16, 1, 8192 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void F32TrainingStepOnTheGpuMatchesTheCpuBackend(string preset, int batch, int sequence, int layers, int vocab) =>
        AssertTrainingStepsAgree(ModelPresets.Get(preset), preset, batch, sequence, layers, vocab);

    /// <summary>
    /// Gemma 2's soft caps (attention, on the simple attention kernels, and the final logits) and heads of 256 (Gemma 2 2B and
    /// 9B, Gemma 3 1B), which the tensor-core attention kernels do not take. Weights of +-0.5 and caps of 1 (attention) and 2
    /// (logits) make the caps bend: without either cap, some token's loss on the CPU must move by more than 100 times the
    /// tolerance of the mean loss, so a kernel that skipped a cap could not pass. (The mean loss alone is a weak witness:
    /// over four seeds on the CPU, the attention cap moved it by 0.1 % to 3 %, the logit cap by about 20 %.)
    /// </summary>
    [Theory]
    [InlineData("gemma2-debug", 0)]
    [InlineData("gemma2-debug", 256)]
    [InlineData("gemma3-debug", 256)]
    public void F32TrainingStepOfAGemmaModelOnTheGpuMatchesTheCpuBackend(string preset, int headSize)
    {
        var config = CudaSoftCapAndWideHeadTests.PresetWithHeadSize(preset, headSize);
        if (config.AttentionSoftCap > 0) config = config with { AttentionSoftCap = 1, FinalSoftCap = 2 };
        AssertTrainingStepsAgree(config, $"{preset} D={headSize}", 2, 32, 0, 0, weightScale: 0.5f,
            uncapped: config.AttentionSoftCap > 0 ? [config with { AttentionSoftCap = 0 }, config with { FinalSoftCap = 0 }] : []);
    }

    private void AssertTrainingStepsAgree(TransformerConfig config, string preset, int batch, int sequence, int layers, int vocab,
        float weightScale = 0.035f, TransformerConfig[]? uncapped = null)
    {
        var gpu = fixture.Backend;
        if (layers > 0) config = config with { Layers = layers };
        if (vocab > 0) config = config with { VocabSize = vocab };
        var cpu = new CpuBackend(Environment.ProcessorCount);

        var rng = TestRandom.Create();
        var onGpu = new Transformer(config, gpu, DType.F32);
        var onCpu = new Transformer(config, cpu, DType.F32);
        // Fresh random weights, uniform with GPT-2's init scale unless told (drawn in parallel: Box-Muller over 124M values costs seconds).
        var weights = new float[onGpu.Parameters.Values.NumElements];
        int seed = rng.Next();
        Parallel.For(0, (weights.Length + (1 << 20) - 1) >> 20, c =>
        {
            var r = new Random(seed + c);
            for (int i = c << 20, end = Math.Min(weights.Length, (c + 1) << 20); i < end; i++) weights[i] = weightScale * (2 * r.NextSingle() - 1);
        });
        gpu.CopyFromHost<float>(weights, onGpu.Parameters.Values);
        cpu.CopyFromHost<float>(weights, onCpu.Parameters.Values);
        var tokens = new int[batch * sequence];
        var targets = new int[batch * sequence];
        for (int i = 0; i < tokens.Length; i++) { tokens[i] = rng.Next(config.VocabSize); targets[i] = rng.Next(config.VocabSize); }
        if (uncapped is { Length: > 0 })
        {
            float[] TokenLosses(Transformer model) =>
                cpu.ToArray<float>(model.Loss(cpu.FromHost<int>(tokens, new Shape(batch, sequence)), cpu.FromHost<int>(targets, new Shape(batch, sequence))));
            var capped = TokenLosses(onCpu);
            double mean = capped.Average(Math.Abs);
            foreach (var other in uncapped)
            {
                var plain = new Transformer(other, cpu, DType.F32);
                cpu.CopyFromHost<float>(weights, plain.Parameters.Values);
                double moved = capped.Zip(TokenLosses(plain), (a, b) => Math.Abs(a - b)).Max();
                Assert.True(moved > 100 * Tolerance * mean,
                    $"{preset}: without attention cap {other.AttentionSoftCap} / logit cap {other.FinalSoftCap} no token's loss moves more than {moved:E2} (mean loss {mean:R}): the test could not see a kernel skip that cap");
            }
        }
        weights = [];

        var expected = Step(onCpu, tokens, targets, batch, sequence);
        var actual = Step(onGpu, tokens, targets, batch, sequence);
        foreach (var (what, e, a) in new[] { ("loss", expected.Loss, actual.Loss), ("gradient norm", expected.GradNorm, actual.GradNorm) })
        {
            double rel = Math.Abs(a - e) / Math.Abs(e);
            Assert.True(rel < Tolerance, $"{preset} B={batch} T={sequence}: {what} GPU {a:R} vs CPU {e:R}, relative difference {rel:E2} (tolerance {Tolerance:E0})");
        }
    }

    /// <summary>Loss and gradient norm of one step (the norm read after the AdamW update that uses it).</summary>
    private static (double Loss, double GradNorm) Step(Transformer model, int[] tokens, int[] targets, int b, int t)
    {
        var backend = model.Backend;
        var inputs = backend.FromHost<int>(tokens, new Shape(b, t));
        var labels = backend.FromHost<int>(targets, new Shape(b, t));
        var optimizer = new AdamWOptimizer(model.Parameters, new AdamWOptions());
        var lossSum = backend.Zeros(new Shape(1), model.LossDType);
        double n = b * t;
        model.Parameters.ZeroGrad();
        var losses = model.Loss(inputs, labels, 0, 1.0 / n);
        backend.Sum(losses, lossSum, 1.0 / n);
        model.Backward(0);
        optimizer.Step(1e-3);
        return (backend.ReadScalar(lossSum), optimizer.LastGradNorm());
    }
}
