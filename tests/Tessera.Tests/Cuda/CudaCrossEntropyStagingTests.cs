using Tessera.Cuda;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The fused cross-entropy keeps the first part of each row in shared memory between its two passes
/// (<see cref="CudaBackendOptions.CrossEntropyStagedBytes"/>). On Llama's 128,256-entry vocabulary "auto" stages most of
/// a row, a small budget stages a little and 0 none (the one-CTA kernel, clusters off): the loss and the gradient must match an F64 reference in each case and be
/// the same bits in all three (the arithmetic does not depend on where a vector was read from).
/// </summary>
[Collection("cuda")]
public sealed class CudaCrossEntropyStagingTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]   // the gradient written over the logits, as the fused LM head does
    public void LossAndGradientAreTheSameBitsWithAllSomeOrNoneOfTheRowStaged(bool inPlace)
    {
        const int rows = 3, v = 128_256;
        int seed = Environment.TickCount;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        var values = Stored(Enumerable.Range(0, rows * v).Select(_ => (rng.NextDouble() * 2 - 1) * 8).ToArray(), DType.BF16);
        var targets = new[] { rng.Next(v), -1, v - 1 };   // an ignored row; the last column
        double scale = 1.0 / rows;
        var (expectedLoss, expectedGrad) = CrossEntropyReference.Of(values, targets, v, v, scale);

        double[]? firstLoss = null, firstGrad = null;
        foreach (int? budget in new int?[] { null, 4096, 0 })
        {
            using var backend = new CudaBackend(Gpu.CudaDevice.Ordinal, new CudaBackendOptions { CrossEntropyStagedBytes = budget, CrossEntropyClusterCtas = 0 });
            var logits = backend.Allocate(new Shape(rows, v), DType.BF16);
            backend.CopyFromHost<BFloat16>(values.Select(x => BFloat16.FromSingle((float)x)).ToArray(), logits);
            var t = backend.Allocate(new Shape(rows), DType.I32);
            backend.CopyFromHost<int>(targets, t);
            var losses = backend.Allocate(new Shape(rows), DType.F32);
            backend.Fill(losses, double.NaN);
            var grad = inPlace ? logits : backend.Allocate(new Shape(rows, v), DType.BF16);
            if (!inPlace) backend.Fill(grad, double.NaN);
            backend.CrossEntropy(logits, t, losses, grad, scale);
            var gotLoss = backend.ToArray<float>(losses).Select(x => (double)x).ToArray();
            var gotGrad = backend.ToArray<BFloat16>(grad).Select(x => (double)x.ToSingle()).ToArray();
            string what = budget switch { null => "as much as fits (auto)", 0 => "no staging", _ => $"{budget} bytes staged" };
            // Losses: f32 statistics over 128,256 terms with ex2.approx, ~1e-6 relative. Gradient: BF16 outputs (2^-9).
            AssertClose(expectedLoss, gotLoss, 1e-5, $"losses, {what}");
            AssertClose(expectedGrad, gotGrad, Tolerance(DType.BF16), $"gradient, {what}");
            if (firstLoss is null) { firstLoss = gotLoss; firstGrad = gotGrad; }
            else
            {
                Assert.Equal(firstLoss, gotLoss);
                Assert.Equal(firstGrad, gotGrad);
            }
            TestContext.Current.TestOutputHelper?.WriteLine($"{what}: within tolerance, same bits as the default");
        }
    }
}
