using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The same calls on the CPU backend and the CUDA backend, same f32 inputs: outputs agree to 1e-5
/// norm-wise relative (both compute in f32 with different summation orders).
/// </summary>
[Collection("cuda")]
public sealed class CudaCpuAgreementTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    private readonly CpuBackend _cpu = new(2);

    private (Tensor Gpu, Tensor Cpu) Both(double scale, params int[] dims)
    {
        var (g, values) = Random(DType.F32, scale, dims);
        var c = _cpu.FromHost<float>(values.Select(v => (float)v).ToArray(), new Shape(dims));
        return (g, c);
    }

    private (Tensor Gpu, Tensor Cpu) Empty(params int[] dims) => (Poisoned(DType.F32, dims), _cpu.Allocate(new Shape(dims), DType.F32));

    private void Agree((Tensor Gpu, Tensor Cpu) t, string what) =>
        AssertClose(_cpu.ToArray<float>(t.Cpu).Select(v => (double)v).ToArray(), Download(t.Gpu), 1e-5, what);

    [Fact]
    public void LayerNormAgreesWithCpuBackend()
    {
        int n = 64, c = 768;
        var x = Both(2, n, c); var w = Both(1, c); var b = Both(1, c);
        var o = Empty(n, c); var mean = Empty(n); var rstd = Empty(n);
        Gpu.LayerNormForward(x.Gpu, w.Gpu, b.Gpu, o.Gpu, mean.Gpu, rstd.Gpu, 1e-5);
        _cpu.LayerNormForward(x.Cpu, w.Cpu, b.Cpu, o.Cpu, mean.Cpu, rstd.Cpu, 1e-5);
        Agree(o, "output"); Agree(rstd, "rstd");
        var dout = Both(1, n, c); var dx = Both(1, n, c); var dw = Both(1, c); var db = Both(1, c);
        Gpu.LayerNormBackward(dout.Gpu, x.Gpu, w.Gpu, mean.Gpu, rstd.Gpu, dx.Gpu, dw.Gpu, db.Gpu);
        _cpu.LayerNormBackward(dout.Cpu, x.Cpu, w.Cpu, mean.Cpu, rstd.Cpu, dx.Cpu, dw.Cpu, db.Cpu);
        Agree(dx, "dx"); Agree(dw, "dWeight"); Agree(db, "dBias");
    }

    [Fact]
    public void AttentionAgreesWithCpuBackend()
    {
        int b = 2, t = 48, h = 4, kh = 2, d = 32;
        var q = Both(1, b, t, h, d); var k = Both(1, b, t, kh, d); var v = Both(1, b, t, kh, d);
        var o = Empty(b, t, h, d); var lse = Empty(b, h, t);
        Gpu.AttentionForward(q.Gpu, k.Gpu, v.Gpu, o.Gpu, lse.Gpu, 0.2);
        _cpu.AttentionForward(q.Cpu, k.Cpu, v.Cpu, o.Cpu, lse.Cpu, 0.2);
        Agree(o, "output"); Agree(lse, "logSumExp");
        var dout = Both(1, b, t, h, d);
        var dq = Empty(b, t, h, d); var dk = Empty(b, t, kh, d); var dv = Empty(b, t, kh, d);
        Gpu.AttentionBackward(q.Gpu, k.Gpu, v.Gpu, o.Gpu, dout.Gpu, lse.Gpu, dq.Gpu, dk.Gpu, dv.Gpu, 0.2);
        _cpu.AttentionBackward(q.Cpu, k.Cpu, v.Cpu, o.Cpu, dout.Cpu, lse.Cpu, dq.Cpu, dk.Cpu, dv.Cpu, 0.2);
        Agree(dq, "dq"); Agree(dk, "dk"); Agree(dv, "dv");
    }

    [Fact]
    public void CrossEntropyAndAdamWAgreeWithCpuBackend()
    {
        int rows = 16, vocab = 1000;
        var logits = Both(4, rows, vocab);
        var ids = Enumerable.Range(0, rows).Select(i => i * 37 % vocab).ToArray();
        var tg = UploadInts(ids, rows); var tc = _cpu.FromHost<int>(ids, new Shape(rows));
        var losses = Empty(rows); var dl = Empty(rows, vocab);
        Gpu.CrossEntropy(logits.Gpu, tg, losses.Gpu, dl.Gpu, 1.0 / rows);
        _cpu.CrossEntropy(logits.Cpu, tc, losses.Cpu, dl.Cpu, 1.0 / rows);
        Agree(losses, "losses"); Agree(dl, "dLogits");

        int n = 4096;
        var p = Both(1, n); var g = Both(0.1, n); var m = Both(0.01, n);
        var vv = Enumerable.Range(0, n).Select(_ => (float)(Rng.NextDouble() * 1e-3)).ToArray();
        var v = (Gpu.FromHost<float>(vv, new Shape(n)), _cpu.FromHost<float>(vv, new Shape(n)));
        var ss = (Gpu.Allocate(new Shape(1), DType.F32), _cpu.Allocate(new Shape(1), DType.F32));
        Gpu.Fill(ss.Item1, 0); _cpu.Fill(ss.Item2, 0);
        Gpu.SumOfSquares(g.Gpu, ss.Item1); _cpu.SumOfSquares(g.Cpu, ss.Item2);
        Agree(ss, "sum of squares");
        var step = new AdamWStep(1e-3, 0.9, 0.95, 1e-8, 0.1, 3, 1.0);
        Gpu.AdamW(p.Gpu, g.Gpu, m.Gpu, v.Item1, step, ss.Item1);
        _cpu.AdamW(p.Cpu, g.Cpu, m.Cpu, v.Item2, step, ss.Item2);
        Agree(p, "parameters"); Agree(m, "m"); Agree(v, "v");
    }
}
