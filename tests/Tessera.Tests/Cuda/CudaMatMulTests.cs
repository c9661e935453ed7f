using Xunit;
using Tessera.Tensors;
using Tessera.Tests.Support;

namespace Tessera.Tests.Cuda;

/// <summary>cuBLASLt products against an f64 loop on the same (rounded) inputs.</summary>
[Collection("cuda")]
public sealed class CudaMatMulTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    [Theory]
    [InlineData(DType.F32, false, false)]
    [InlineData(DType.F32, true, false)]
    [InlineData(DType.F32, false, true)]
    [InlineData(DType.F32, true, true)]
    [InlineData(DType.BF16, false, false)]
    [InlineData(DType.BF16, false, true)]
    [InlineData(DType.BF16, true, false)]
    [InlineData(DType.F64, false, true)]
    public void MatMulMatchesReference(DType dtype, bool ta, bool tb)
    {
        int m = 67, n = 45, k = 129;
        var (a, av) = ta ? Random(dtype, 1, k, m) : Random(dtype, 1, m, k);
        var (b, bv) = tb ? Random(dtype, 1, n, k) : Random(dtype, 1, k, n);
        var c = Poisoned(dtype, m, n);
        Gpu.MatMul(a, b, c, ta, tb, alpha: 0.5);
        AssertClose(ReferenceMatMul.Compute(av, bv, null, 1, m, n, k, ta, tb, 0.5, 0, null), Download(c), Tolerance(dtype), $"{dtype} ta={ta} tb={tb}");
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    public void BiasEpilogueAndBetaAccumulation(DType dtype)
    {
        int m = 64, n = 96, k = 80;
        var (a, av) = Random(dtype, 1, m, k);
        var (b, bv) = Random(dtype, 1, n, k);
        var (bias, biasv) = Random(dtype, 1, n);
        var c = Poisoned(dtype, m, n);
        Gpu.MatMul(a, b, c, transposeB: true, bias: bias);
        var expected = ReferenceMatMul.Compute(av, bv, null, 1, m, n, k, false, true, 1, 0, biasv);
        AssertClose(expected, Download(c), Tolerance(dtype), "bias");

        var (c2, c2v) = Random(dtype, 1, m, n);
        Gpu.MatMul(a, b, c2, transposeB: true, beta: 1.0); // weight-gradient style accumulation
        AssertClose(ReferenceMatMul.Compute(av, bv, c2v, 1, m, n, k, false, true, 1, 1, null), Download(c2), Tolerance(dtype), "beta=1");
    }

    /// <summary>
    /// c = a b^T + bias + addend, the residual connection done by cuBLASLt reading the addend as C (beta = 1) and writing c;
    /// an addend in another layout (a column slice of a wider matrix) is copied into c first. The addend is left as it was.
    /// </summary>
    [Theory]
    [InlineData(DType.F32, false)]
    [InlineData(DType.BF16, false)]
    [InlineData(DType.BF16, true)]
    public void ProductWithAnAddendMatchesTheReferenceAndLeavesTheAddend(DType dtype, bool stridedAddend)
    {
        int m = 64, n = 96, k = 80;
        var (a, av) = Random(dtype, 1, m, k);
        var (b, bv) = Random(dtype, 1, n, k);
        var (bias, biasv) = Random(dtype, 1, n);
        var (wide, widev) = Random(dtype, 1, m, stridedAddend ? n + 8 : n);
        var addend = stridedAddend ? wide.Slice(1, 0, n) : wide;
        var addv = stridedAddend ? Enumerable.Range(0, m * n).Select(i => widev[i / n * (n + 8) + i % n]).ToArray() : widev;
        var c = Poisoned(dtype, m, n);
        Gpu.MatMul(a, b, c, transposeB: true, bias: bias, addend: addend);
        AssertClose(ReferenceMatMul.Compute(av, bv, addv, 1, m, n, k, false, true, 1, 1, biasv), Download(c), Tolerance(dtype), "product + bias + addend");
        AssertClose(widev, Download(wide), 0, "the addend is not written");
    }

    [Fact]
    public void Bf16InputsWithF32Output()
    {
        int m = 33, n = 65, k = 200;
        var (a, av) = Random(DType.BF16, 1, m, k);
        var (b, bv) = Random(DType.BF16, 1, k, n);
        var c = Poisoned(DType.F32, m, n);
        Gpu.MatMul(a, b, c);
        // Products of bf16 values are exact in fp32 and accumulate in fp32: f32 tolerance holds.
        AssertClose(ReferenceMatMul.Compute(av, bv, null, 1, m, n, k, false, false, 1, 0, null), Download(c), 1e-5, "bf16->f32");
    }

    [Theory]
    [InlineData(DType.F32, false, true)]
    [InlineData(DType.BF16, true, false)]
    public void BatchedStridedProduct(DType dtype, bool ta, bool tb)
    {
        int batch = 5, m = 31, n = 24, k = 40;
        var (a, av) = ta ? Random(dtype, 1, batch, k, m) : Random(dtype, 1, batch, m, k);
        var (b, bv) = tb ? Random(dtype, 1, batch, n, k) : Random(dtype, 1, batch, k, n);
        var c = Poisoned(dtype, batch, m, n);
        Gpu.MatMul(a, b, c, ta, tb);
        AssertClose(ReferenceMatMul.Compute(av, bv, null, batch, m, n, k, ta, tb, 1, 0, null), Download(c), Tolerance(dtype), "batched");
    }

    [Fact]
    public void RowSliceOfALargerMatrixIsUsedInPlace()
    {
        // a is columns [16, 16+k) of a (m, 64) matrix: row stride 64, not k.
        int m = 20, n = 12, k = 32;
        var (big, bigv) = Random(DType.F32, 1, m, 64);
        var a = big.Slice(1, 16, k);
        var av = new double[m * k];
        for (int i = 0; i < m; i++) for (int p = 0; p < k; p++) av[i * k + p] = bigv[i * 64 + 16 + p];
        var (b, bv) = Random(DType.F32, 1, k, n);
        var c = Poisoned(DType.F32, m, n);
        Gpu.MatMul(a, b, c);
        AssertClose(ReferenceMatMul.Compute(av, bv, null, 1, m, n, k, false, false, 1, 0, null), Download(c), 1e-5, "sliced a");
    }
}
