using Xunit;
using Tessera.Tensors;

namespace Tessera.Tests.Cuda;

/// <summary>LayerNorm and RMSNorm forward and backward against f64 references; backward accumulates into dx, dWeight, dBias.</summary>
[Collection("cuda")]
public sealed class CudaNormTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    [Theory]
    [InlineData(DType.F32, 300)]
    [InlineData(DType.F32, 2304)]
    [InlineData(DType.BF16, 768)]
    [InlineData(DType.BF16, 1000)]   // warp-per-row kernels, a partly filled last vector slot per lane
    [InlineData(DType.F32, 512)]     // warp-per-row backward at its register limit (4 vectors x 32 lanes x 4)
    [InlineData(DType.F16, 1032)]    // vectorized forward, backward past the warp kernel's limit (block kernel)
    [InlineData(DType.BF16, 768, 5000)] // GPT-2's width over more rows than the grid's warps: each warp takes several
    public void LayerNormForwardAndBackward(DType dtype, int c, int n = 37)
    {
        const double eps = 1e-5;
        var (x, xv) = Random(dtype, 2, n, c);
        var (w, wv) = Random(dtype, 1, c);
        var (b, bv) = Random(dtype, 1, c);
        var o = Poisoned(dtype, n, c);
        var mean = Poisoned(DType.F32, n); var rstd = Poisoned(DType.F32, n);
        Gpu.LayerNormForward(x, w, b, o, mean, rstd, eps);
        var eo = new double[n * c]; var em = new double[n]; var er = new double[n];
        for (int r = 0; r < n; r++)
        {
            double mu = 0, var_ = 0;
            for (int i = 0; i < c; i++) mu += xv[r * c + i];
            mu /= c;
            for (int i = 0; i < c; i++) var_ += (xv[r * c + i] - mu) * (xv[r * c + i] - mu);
            double rs = 1 / Math.Sqrt(var_ / c + eps);
            em[r] = mu; er[r] = rs;
            for (int i = 0; i < c; i++) eo[r * c + i] = (xv[r * c + i] - mu) * rs * wv[i] + bv[i];
        }
        AssertClose(eo, Download(o), Tolerance(dtype), "output");
        AssertClose(em, Download(mean), 1e-5, "mean");
        AssertClose(er, Download(rstd), 1e-5, "rstd");

        var (dout, dv) = Random(dtype, 1, n, c);
        var (dx, dxv) = Random(dtype, 1, n, c);
        var (dw, dwv) = Random(DType.F32, 1, c);
        var (db, dbv) = Random(DType.F32, 1, c);
        Gpu.LayerNormBackward(dout, x, w, mean, rstd, dx, dw, db);
        var edx = (double[])dxv.Clone(); var edw = (double[])dwv.Clone(); var edb = (double[])dbv.Clone();
        for (int r = 0; r < n; r++)
        {
            double a = 0, bs = 0;
            for (int i = 0; i < c; i++)
            {
                double xh = (xv[r * c + i] - em[r]) * er[r], dn = dv[r * c + i] * wv[i];
                a += dn; bs += dn * xh;
                edw[i] += dv[r * c + i] * xh; edb[i] += dv[r * c + i];
            }
            a /= c; bs /= c;
            for (int i = 0; i < c; i++)
            {
                double xh = (xv[r * c + i] - em[r]) * er[r];
                edx[r * c + i] += er[r] * (dv[r * c + i] * wv[i] - a - xh * bs);
            }
        }
        AssertClose(edx, Download(dx), Tolerance(dtype), "dx");
        // dWeight, dBias are f32 here; with bf16 inputs the per-element terms are still rounded inputs, so f32 tolerance.
        AssertClose(edw, Download(dw), dtype == DType.F32 ? 1e-5 : 1e-4, "dWeight");
        AssertClose(edb, Download(db), 1e-5, "dBias");
    }

    [Theory]
    [InlineData(DType.F32, 512)]
    [InlineData(DType.BF16, 1000)]          // row-in-registers kernels: 125 vectors, a block of 128 threads with 3 idle
    [InlineData(DType.BF16, 2048, 5000)]    // llama-1b's width over more rows than the grid's blocks: each walks several
    [InlineData(DType.F32, 4096, 300)]      // 1024 vectors: a block of 1024 threads
    [InlineData(DType.BF16, 4096)]          // llama-8b's width
    [InlineData(DType.F16, 8192, 9)]        // the widest row the vector kernels take
    [InlineData(DType.BF16, 300)]           // 600 bytes per row, not 16-byte vectors: the loop kernels
    public void RmsNormForwardAndBackward(DType dtype, int c, int n = 41)
    {
        const double eps = 1e-6;
        var (x, xv) = Random(dtype, 2, n, c);
        var (w, wv) = Random(dtype, 1, c);
        var o = Poisoned(dtype, n, c);
        var rstd = Poisoned(DType.F32, n);
        Gpu.RmsNormForward(x, w, o, rstd, eps);
        var eo = new double[n * c]; var er = new double[n];
        for (int r = 0; r < n; r++)
        {
            double ss = 0;
            for (int i = 0; i < c; i++) ss += xv[r * c + i] * xv[r * c + i];
            er[r] = 1 / Math.Sqrt(ss / c + eps);
            for (int i = 0; i < c; i++) eo[r * c + i] = xv[r * c + i] * er[r] * wv[i];
        }
        AssertClose(eo, Download(o), Tolerance(dtype), "output");
        AssertClose(er, Download(rstd), 1e-5, "rstd");

        var (dout, dv) = Random(dtype, 1, n, c);
        var (dx, dxv) = Random(dtype, 1, n, c);
        var (dw, dwv) = Random(dtype, 1, c);
        Gpu.RmsNormBackward(dout, x, w, rstd, dx, dw);
        var edx = (double[])dxv.Clone(); var edw = (double[])dwv.Clone();
        for (int r = 0; r < n; r++)
        {
            double bs = 0;
            for (int i = 0; i < c; i++) { double xh = xv[r * c + i] * er[r]; bs += dv[r * c + i] * wv[i] * xh; edw[i] += dv[r * c + i] * xh; }
            bs /= c;
            for (int i = 0; i < c; i++) edx[r * c + i] += er[r] * (dv[r * c + i] * wv[i] - xv[r * c + i] * er[r] * bs);
        }
        AssertClose(edx, Download(dx), Tolerance(dtype), "dx");
        AssertClose(edw, Download(dw), Tolerance(dtype), "dWeight");
    }
}
