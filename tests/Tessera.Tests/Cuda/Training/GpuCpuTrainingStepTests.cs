using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Optim;
using Xunit;

namespace Tessera.Tests.Cuda.Training;

/// <summary>
/// The same F32 training steps on the CUDA backend and on the CPU backend, from the same weights and tokens:
/// loss, gradient norm and the loss after one AdamW update agree within 1e-4 relative. Both sides compute in F32
/// (cuBLASLt with TF32 off); they differ only in summation order, which moves a 124M-parameter sum of squares
/// by ~1e-6 relative, so 1e-4 leaves two orders of margin and still catches any wrong kernel (errors there are
/// 1e-2 and up).
/// </summary>
[Collection("cuda")]
public sealed class GpuCpuTrainingStepTests(CudaFixture fixture)
{
    private const double Tolerance = 1e-4;

    /// <summary>Preset, batch, sequence, layer override (llama-1b keeps its width, heads and vocabulary but 4 of its 16 layers so the CPU side stays under a minute).</summary>
    public static TheoryData<string, int, int, int> Cases => new()
    {
        { "gpt2-124m", 2, 64, 0 },
        { "llama-debug", 2, 32, 0 },
        { "llama-1b", 1, 32, 4 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void F32TrainingStepOnTheGpuMatchesTheCpuBackend(string preset, int batch, int sequence, int layers)
    {
        var gpu = fixture.Backend;
        var config = ModelPresets.Get(preset);
        if (layers > 0) config = config with { Layers = layers };
        var cpu = new CpuBackend(Environment.ProcessorCount);

        var onGpu = new Transformer(config, gpu, DType.F32);
        onGpu.InitializeWeights(seed: 11);
        var onCpu = new Transformer(config, cpu, DType.F32);
        var weights = new float[onGpu.Parameters.Values.NumElements];
        gpu.CopyToHost<float>(onGpu.Parameters.Values, weights);
        cpu.CopyFromHost<float>(weights, onCpu.Parameters.Values);
        weights = [];

        var rng = new Random(Environment.TickCount);
        var tokens = new int[batch * sequence];
        var targets = new int[batch * sequence];
        for (int i = 0; i < tokens.Length; i++) { tokens[i] = rng.Next(config.VocabSize); targets[i] = rng.Next(config.VocabSize); }

        var expected = TwoSteps(onCpu, tokens, targets, batch, sequence);
        var actual = TwoSteps(onGpu, tokens, targets, batch, sequence);
        foreach (var (what, e, a) in new[] { ("loss", expected.Loss, actual.Loss), ("gradient norm", expected.GradNorm, actual.GradNorm), ("loss after one AdamW step", expected.NextLoss, actual.NextLoss) })
        {
            double rel = Math.Abs(a - e) / Math.Abs(e);
            Assert.True(rel < Tolerance, $"{preset} B={batch} T={sequence}: {what} GPU {a:R} vs CPU {e:R}, relative difference {rel:E2} (tolerance {Tolerance:E0})");
        }
    }

    /// <summary>Loss and gradient norm of a step, then the loss after its AdamW update (lr 1e-3, clip 1).</summary>
    private static (double Loss, double GradNorm, double NextLoss) TwoSteps(Transformer model, int[] tokens, int[] targets, int b, int t)
    {
        var backend = model.Backend;
        var inputs = backend.FromHost<int>(tokens, new Shape(b, t));
        var labels = backend.FromHost<int>(targets, new Shape(b, t));
        var optimizer = new AdamWOptimizer(model.Parameters, new AdamWOptions());
        var lossSum = backend.Zeros(new Shape(1), model.LossDType);
        double n = b * t;
        var result = new double[3];
        for (int step = 0; step < 2; step++)
        {
            model.Parameters.ZeroGrad();
            var losses = model.Loss(inputs, labels, 0, 1.0 / n);
            backend.Fill(lossSum, 0);
            backend.Sum(losses, lossSum, 1.0 / n);
            model.Backward(0);
            if (step == 0)
            {
                optimizer.Step(1e-3);
                result[0] = backend.ReadScalar(lossSum);
                result[1] = optimizer.LastGradNorm();
            }
            else result[2] = backend.ReadScalar(lossSum);
        }
        return (result[0], result[1], result[2]);
    }
}
