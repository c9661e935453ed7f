using Tessera.Cuda;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The fused cross-entropy with a row shared by a thread-block cluster (<see cref="CudaBackendOptions.CrossEntropyClusterCtas"/>,
/// compute capability 9.0): the row's logits read once into the CTAs' registers, the statistics merged through distributed
/// shared memory, the gradient written from the registers. Against an F64 reference on the stored inputs, at each cluster size
/// with 4 and 8 vectors a thread, and with the one-CTA kernel (0), on GPT-2's padded rows (50,257 real logits 50,304 apart, the gradient over the logits as
/// the fused head writes it), Llama 3's 128,256, and the F32 and F16 instantiations; with an ignored row, a target in the last
/// column and one past the vocabulary (NaN loss). The padding between rows must keep its values.
/// </summary>
[Collection("cuda")]
public sealed class CudaCrossEntropyClusterTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    public static TheoryData<string, int, int, int, int> Rows => new()
    {
        { "BF16", 50_257, 50_304, 8, 4 },     // gpt2-124m's head: 6,282 vectors a row and a one-element tail
        { "BF16", 50_257, 50_304, 8, 8 },
        { "BF16", 50_257, 50_304, 2, 4 },
        { "BF16", 128_256, 128_256, 8, 4 },   // llama-3's vocabulary: 2,004 vectors a CTA
        { "BF16", 128_256, 128_256, 4, 8 },
        { "BF16", 128_256, 128_256, 0, 4 },   // the one-CTA kernel on the same rows
        { "F32", 32_000, 32_000, 4, 4 },      // llama-2's vocabulary, 4 logits a vector
        { "F16", 50_304, 50_304, 8, 8 },
    };

    [Theory]
    [MemberData(nameof(Rows))]
    public void LossAndGradientMatchTheReferenceWithTheRowSharedByACluster(string type, int v, int stride, int ctas, int vectors)
    {
        if (Gpu.CudaDevice.ComputeCapability.Major < 9 && ctas > 0)
            Assert.Skip($"thread-block clusters need compute capability 9.0; this device is {Gpu.CudaDevice.ComputeCapability}");
        var dtype = Enum.Parse<DType>(type);
        const int rows = 6;
        var values = new double[rows * stride];
        for (int i = 0; i < values.Length; i++) values[i] = i % stride < v ? (Rng.NextDouble() * 2 - 1) * 8 : 3.0;   // padding: 3
        values = Stored(values, dtype);
        var targets = new int[rows];
        for (int r = 0; r < rows; r++) targets[r] = Rng.Next(v);
        targets[1] = -1;        // ignored: loss 0, gradient 0
        targets[2] = v - 1;     // the last column (GPT-2: the tail element)
        targets[3] = v;         // past the vocabulary: NaN loss
        double scale = 1.0 / rows;

        var (expectedLoss, expectedGrad) = CrossEntropyReference.Of(values, targets, v, stride, scale);

        using var backend = new CudaBackend(Gpu.CudaDevice.Ordinal, new CudaBackendOptions { CrossEntropyClusterCtas = ctas, CrossEntropyClusterVectors = vectors, CrossEntropyClusterMinRowBytes = 0 });
        var storage = Upload(backend, values, dtype, rows, stride);
        var logits = stride == v ? storage : storage.Slice(1, 0, v);          // (rows, V) rows `stride` apart
        var t = backend.Allocate(new Shape(rows), DType.I32);
        backend.CopyFromHost<int>(targets, t);
        var losses = backend.Allocate(new Shape(rows), DType.F32);
        backend.Fill(losses, double.NaN);
        backend.CrossEntropy(logits, t, losses, logits, scale);
        var gotLoss = Download(backend, losses);
        var gotGrad = Download(backend, storage);

        Assert.True(double.IsNaN(gotLoss[3]), $"a target past the vocabulary gives a NaN loss, got {gotLoss[3]}");
        gotLoss[3] = expectedLoss[3] = 0;
        Assert.Equal(0.0, gotLoss[1]);
        // Losses: f32 statistics over up to 128,256 terms with ex2.approx, ~1e-6 relative. Gradient: rounded to the dtype
        // (BF16 2^-9 relative; F32 1e-5 as for every F32 op).
        AssertClose(expectedLoss, gotLoss, 1e-5, $"losses, {type} V={v}, clusters of {ctas}, {vectors} vectors a thread");
        AssertClose(expectedGrad, gotGrad, Tolerance(dtype), $"gradient and padding, {type} V={v}, clusters of {ctas}, {vectors} vectors a thread");
        for (int i = 0; i < v; i++) Assert.Equal(0.0, gotGrad[stride + i]);
        for (int r = 0; r < rows; r++)
            for (int i = v; i < stride; i++) Assert.Equal(3.0, gotGrad[r * stride + i]);
    }

    /// <summary>
    /// More rows than the device holds clusters at once (1,200 rows of 16,384 BF16 logits: CTAs of 32 threads, at most 528
    /// clusters of 8 resident on an H200), so each cluster walks several rows with the next one loaded ahead, as in the fused head's
    /// chunks of 2,048 rows; every 7th row ignored. The six-row cases above give each cluster one row. Losses and gradients
    /// against F64 with the tolerances above.
    /// </summary>
    [Fact]
    public void ClustersThatWalkSeveralRowsMatchTheReference()
    {
        if (Gpu.CudaDevice.ComputeCapability.Major < 9)
            Assert.Skip($"thread-block clusters need compute capability 9.0; this device is {Gpu.CudaDevice.ComputeCapability}");
        const int rows = 1200, v = 16_384;
        var values = Stored(Enumerable.Range(0, rows * v).Select(_ => (Rng.NextDouble() * 2 - 1) * 8).ToArray(), DType.BF16);
        var targets = Enumerable.Range(0, rows).Select(r => r % 7 == 3 ? -1 : Rng.Next(v)).ToArray();
        double scale = 1.0 / rows;
        var (expectedLoss, expectedGrad) = CrossEntropyReference.Of(values, targets, v, v, scale);
        using var backend = new CudaBackend(Gpu.CudaDevice.Ordinal, new CudaBackendOptions { CrossEntropyClusterMinRowBytes = 0 });
        var logits = Upload(backend, values, DType.BF16, rows, v);
        var t = backend.Allocate(new Shape(rows), DType.I32);
        backend.CopyFromHost<int>(targets, t);
        var losses = backend.Allocate(new Shape(rows), DType.F32);
        backend.Fill(losses, double.NaN);
        backend.CrossEntropy(logits, t, losses, logits, scale);
        AssertClose(expectedLoss, Download(backend, losses), 1e-5, "losses, 1,200 rows walked by the clusters");
        AssertClose(expectedGrad, Download(backend, logits), Tolerance(DType.BF16), "gradient, 1,200 rows walked by the clusters");
    }
}
