using Tessera.Inference;

using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Optim;
using Xunit;

namespace Tessera.Tests.Models.Golden;

/// <summary>
/// Tessera on the CPU against PyTorch + transformers on the same tiny random-init models
/// (tests/Tessera.Tests/Golden, made by scripts/golden/make_golden.py).
/// Tolerances: F32 logits and gradients within 1e-4 relative (float32 rounding over these short sums is
/// ~1e-6; the reference itself differs from its own f64 run by up to 1e-6); F64 within 1e-9 (both sides
/// compute in double; differences are summation order only, ~1e-13); AdamW losses within 1e-4.
/// </summary>
public class GoldenModelTests
{
    /// <summary>Every golden model folder: the debug presets, Llama 3.2-style rope_type llama3 past its original context,
    /// Qwen2 (q/k/v biases), Mistral (window 5 over 16 positions), and the linear, dynamic NTK and YaRN scalings.</summary>
    public static readonly string[] Names =
        ["gpt2-debug", "llama-debug", "llama3-debug", "qwen2-debug", "mistral-debug", "llama-linear-debug", "llama-dynamic-debug", "llama-yarn-debug"];

    public static TheoryData<string, DType> Cases
    {
        get
        {
            var data = new TheoryData<string, DType>();
            foreach (var name in Names) { data.Add(name, DType.F32); data.Add(name, DType.F64); }
            return data;
        }
    }

    public static TheoryData<string> GenerationCases
    {
        get
        {
            var data = new TheoryData<string>();
            foreach (var name in Names) data.Add(name);
            return data;
        }
    }

    private static double Tolerance(DType dtype) => dtype == DType.F64 ? 1e-9 : 1e-4;

    /// <summary>The backend the model runs on; the GPU twin (Cuda/Training/CudaGoldenModelTests) overrides it.</summary>
    protected virtual IBackend CreateBackend(DType dtype) => new CpuBackend(2);

    private (global::Tessera.Models.Transformer Model, IBackend Backend) Load(GoldenCase golden, DType dtype)
    {
        var backend = CreateBackend(dtype);
        var model = new global::Tessera.Models.Transformer(golden.Config, backend, dtype);
        using var dir = HuggingFaceModelDirectory.Open(golden.Directory);
        dir.LoadInto(model.Parameters.Parameters, backend);
        return (model, backend);
    }

    private static Tensor Ints(IBackend backend, Tessera.Models.Safetensors.SafetensorsFile file, string name)
    {
        var info = file[name];
        var bytes = file.ReadBytes(name);
        var ints = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(bytes).ToArray();
        return backend.FromHost<int>(ints, info.Shape);
    }

    private static double[] Read(Tessera.Models.Safetensors.SafetensorsFile file, string name) => file.ReadAsDouble(name);

    private static double[] ToDoubles(IBackend backend, Tensor t) =>
        t.DType == DType.F64 ? backend.ToArray<double>(t) : Array.ConvertAll(backend.ToArray<float>(t), f => (double)f);

    /// <summary>max |a - b| / max |b|: robust for tensors with entries near zero.</summary>
    private static double RelativeError(ReadOnlySpan<double> actual, ReadOnlySpan<double> expected)
    {
        Assert.Equal(expected.Length, actual.Length);
        double diff = 0, scale = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.False(double.IsNaN(actual[i]), $"NaN at {i}");
            diff = Math.Max(diff, Math.Abs(actual[i] - expected[i]));
            scale = Math.Max(scale, Math.Abs(expected[i]));
        }
        return diff / Math.Max(scale, 1e-30);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void LogitsLossAndEveryGradientMatchTransformers(string name, DType dtype)
    {
        var golden = new GoldenCase(name);
        var (model, backend) = Load(golden, dtype);
        using var file = golden.Open(dtype);
        var tokens = Ints(backend, file, "tokens");
        var targets = Ints(backend, file, "targets");
        int v = golden.Config.VocabSize;

        var logits = model.Forward(tokens);                       // (B, T, Vpad)
        var got = ToDoubles(backend, backend.Contiguous(logits.Slice(2, 0, v)));
        double logitErr = RelativeError(got, Read(file, "logits"));
        Assert.True(logitErr < Tolerance(dtype), $"logits relative error {logitErr:E2}");

        long n = tokens.NumElements;
        model.Parameters.ZeroGrad();
        var losses = model.Loss(tokens, targets, microBatch: 0, lossScale: 1.0 / n);
        var lossSum = backend.Zeros(new Shape(1), dtype);
        backend.Sum(losses, lossSum, 1.0 / n);
        double loss = backend.ReadScalar(lossSum);
        double expectedLoss = Read(file, "loss")[0];
        Assert.True(Math.Abs(loss - expectedLoss) / expectedLoss < Tolerance(dtype), $"loss {loss} vs {expectedLoss}");
        model.Backward(microBatch: 0);

        var hfGrads = file.Tensors.Where(t => t.Name.StartsWith("grad.", StringComparison.Ordinal))
            .ToDictionary(t => t.Name["grad.".Length..], t => (t.Shape, Read(file, t.Name)), StringComparer.Ordinal);
        var expected = golden.ToCanonical(hfGrads);
        Assert.Equal(model.Parameters.Parameters.Select(p => p.Name).Order(), expected.Keys.Order());
        foreach (var p in model.Parameters.Parameters)
        {
            double err = RelativeError(ToDoubles(backend, p.Grad), expected[p.Name]);
            Assert.True(err < Tolerance(dtype), $"{p.Name}: gradient relative error {err:E2} (tolerance {Tolerance(dtype):E0})");
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void TenAdamWStepsFollowTheReferenceLossCurve(string name, DType dtype)
    {
        var golden = new GoldenCase(name);
        var (model, backend) = Load(golden, dtype);
        using var file = golden.Open(dtype);
        var tokens = Ints(backend, file, "tokens");
        var targets = Ints(backend, file, "targets");
        var expectedLosses = Read(file, "adamw_losses");
        var expectedNorms = Read(file, "adamw_grad_norms");
        // The reference: lr 1e-3, betas (0.9, 0.95), eps 1e-8, decay 0.1 on matrices, clip 1.0 (scripts/golden/make_golden.py).
        var optimizer = new AdamWOptimizer(model.Parameters, new AdamWOptions { Beta1 = 0.9, Beta2 = 0.95, Epsilon = 1e-8, WeightDecay = 0.1, MaxGradNorm = 1.0 });
        long n = tokens.NumElements;
        var lossSum = backend.Zeros(new Shape(1), dtype);
        for (int step = 0; step < expectedLosses.Length; step++)
        {
            model.Parameters.ZeroGrad();
            var losses = model.Loss(tokens, targets, 0, 1.0 / n);
            backend.Fill(lossSum, 0);
            backend.Sum(losses, lossSum, 1.0 / n);
            double loss = backend.ReadScalar(lossSum);
            model.Backward(0);
            optimizer.Step(1e-3);
            Assert.True(Math.Abs(loss - expectedLosses[step]) / expectedLosses[step] < Tolerance(dtype) * (dtype == DType.F64 ? 10 : 1),
                $"step {step}: loss {loss} vs {expectedLosses[step]}");
            double norm = optimizer.LastGradNorm();
            Assert.True(Math.Abs(norm - expectedNorms[step]) / expectedNorms[step] < Tolerance(dtype) * (dtype == DType.F64 ? 10 : 1),
                $"step {step}: grad norm {norm} vs {expectedNorms[step]}");
        }
        if (dtype == DType.F64)
        {
            // The parameters after 10 steps pin down weight decay and clipping, which the losses barely feel.
            var finals = file.Tensors.Where(t => t.Name.StartsWith("adamw_final.", StringComparison.Ordinal))
                .ToDictionary(t => t.Name["adamw_final.".Length..], t => (t.Shape, Read(file, t.Name)), StringComparer.Ordinal);
            var expected = golden.ToCanonical(finals);
            foreach (var p in model.Parameters.Parameters)
            {
                double err = RelativeError(ToDoubles(backend, p.Value), expected[p.Name]);
                Assert.True(err < 1e-9, $"{p.Name}: parameters after 10 steps differ by {err:E2}");
            }
        }
    }

    [Theory]
    [MemberData(nameof(GenerationCases))]
    public void GreedyGenerationGivesTheSameTokensAsTransformersGenerate(string name)
    {
        var golden = new GoldenCase(name);
        var (model, backend) = Load(golden, DType.F32);
        using var file = golden.Open(DType.F32);
        var prompt = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(file.ReadBytes("generate_prompt")).ToArray();
        var expected = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(file.ReadBytes("generate_tokens")).ToArray();
        var generated = new TextGenerator(model).Generate(prompt, new GenerationOptions { MaxNewTokens = expected.Length }).ToArray();
        Assert.Equal(expected, generated);
    }
}
