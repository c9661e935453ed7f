using System.Globalization;
using Tessera.Cuda;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The int4 products of llama-1b's decode layers (QKV 3072 x 2048, output 2048 x 2048, gate 8192 x 2048, down 2048 x 8192;
/// groups of 128) at 1, 8, 16, 32 and 64 rows of bf16 x, beside the bf16 weights' products on the same backend options: the
/// default (the int4 decode product by group sums at 5 to 64 rows), <c>Int4DecodeProductStages=8</c> (its 8-stage kernels),
/// <c>Int4DecodeProductXTiles=2</c> and <c>4</c> (two or four of x's n8 tiles at once: more mma chains in flight; session 36),
/// <c>QuantizedDecodeProductCtasPerSm=2</c> and <c>4</c> (K split into more slices, more CTAs an SM; session 34),
/// <c>QuantizedDecodeProductNormMaxRows=0</c> (the norm kernel before a normalized product) and <c>=64</c> (the norm on the way
/// at every row count; the default takes the norm kernel past 32 rows, session 35) and bf16 (cuBLASLt at 5 to 64 rows, the
/// matrix-vector stream at 1); and the gate/up pair through the SwiGLU ops (int4: QuantizedMatMulSwiGlu, bf16: MatMulSwiGlu),
/// and QKV and that pair with the RMSNorm in front of them, as a decode step runs them. Each product runs over 16
/// distinct weights in turn, as the 16 layers are, so the L2 cannot serve a repeat. Runs only when TESSERA_CUDA_TIMINGS=1;
/// the table goes to the test output and to int4-product-timings.md beside $TESSERA_CUDA_TIMINGS_OUT. CUDA events around
/// each pass of 16, median of 10 after 3 warm-ups, in an inference scope as a decode step runs. Not a test of speed: it fails
/// only if a product gives a non-finite output.
/// </summary>
[Collection("cuda")]
public sealed class CudaInt4ProductSpeedReport(CudaFixture fixture) : CudaTestBase(fixture)
{
    private const int Layers = 16, Group = 128;
    private const string GateUp = "gate/up SwiGLU", Qkv = "QKV", Normalized = ", normalized";

    [Fact]
    public void Int4ProductsAgainstBf16AtDecodeRows()
    {
        if (Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS") != "1") Assert.Skip("timings run only with TESSERA_CUDA_TIMINGS=1");
        // The layer's four products as session 32 timed them (gate alone), and the gate/up pair through the SwiGLU ops
        // (QuantizedMatMulSwiGlu, MatMulSwiGlu: one launch at 1 to 64 rows), reported beside them.
        (string Name, int N, int K)[] products = [("QKV", 3072, 2048), ("output", 2048, 2048), ("gate", 8192, 2048), ("down", 2048, 8192),
            (GateUp, 8192, 2048), (Qkv + Normalized, 3072, 2048), (GateUp + Normalized, 8192, 2048)];
        var four = products.Where(p => p.Name != GateUp && !p.Name.EndsWith(Normalized, StringComparison.Ordinal)).ToArray();
        int[] rows = [1, 8, 16, 32, 64];
        (string Name, CudaBackendOptions Options, bool Int4)[] forms =
        [
            ("int4 (default)", CudaBackendOptions.Default, true),
            ("int4, 8 stages", CudaBackendOptions.Default with { Int4DecodeProductStages = 8 }, true),
            ("int4, 2 x tiles at once", CudaBackendOptions.Default with { Int4DecodeProductXTiles = 2 }, true),
            ("int4, 4 x tiles at once", CudaBackendOptions.Default with { Int4DecodeProductXTiles = 4 }, true),
            ("int4, 2 CTAs an SM", CudaBackendOptions.Default with { QuantizedDecodeProductCtasPerSm = 2 }, true),
            ("int4, 4 CTAs an SM", CudaBackendOptions.Default with { QuantizedDecodeProductCtasPerSm = 4 }, true),
            ("int4, norm kernel first", CudaBackendOptions.Default with { QuantizedDecodeProductNormMaxRows = 0 }, true),
            ("int4, norm on the way", CudaBackendOptions.Default with { QuantizedDecodeProductNormMaxRows = 64 }, true),
            ("bf16", CudaBackendOptions.Default, false),
        ];
        // The clocks up first: the first form's first rows ran up to 1.7x slow without it (session 32, call C).
        var warmA = Gpu.Allocate(new Shape(4096, 4096), DType.BF16); Gpu.Fill(warmA, 0.001);
        var warmC = Gpu.Allocate(new Shape(4096, 4096), DType.BF16);
        MedianMs(() => { for (int i = 0; i < 100; i++) Gpu.MatMul(warmA, warmA, warmC, transposeB: true); }, 3);
        warmA.Storage.Dispose(); warmC.Storage.Dispose();
        var us = new Dictionary<(string Form, string Product, int Rows), double>();
        foreach (var (form, options, int4) in forms)
        {
            using var gpu = new CudaBackend(Gpu.CudaDevice.Ordinal, options);
            var x = gpu.Allocate(new Shape(64, 8192), DType.BF16); gpu.Fill(x, 0.01);
            var y = gpu.Allocate(new Shape(64, 8192), DType.BF16); gpu.Fill(y, 0.0);
            var xn = gpu.Allocate(new Shape(64, 2048), DType.BF16); gpu.Fill(xn, 0.01);
            var gain = gpu.Allocate(new Shape(2048), DType.BF16); gpu.Fill(gain, 1.0);
            var norm = new RmsNormPrologue(gain, 1e-5);
            foreach (var (name, n, k) in products)
            {
                var weights = new List<object>();
                for (int l = 0; l < (name.StartsWith(GateUp, StringComparison.Ordinal) ? 2 * Layers : Layers); l++)
                {
                    if (!int4) { var w = gpu.Allocate(new Shape(n, k), DType.BF16); gpu.Fill(w, 0.001); weights.Add(w); continue; }
                    int groups = k / Group;
                    var q = QuantizedWeight.Int4(gpu.Allocate(new Shape(n, k / 8), DType.I32), gpu.Allocate(new Shape(n, groups), DType.F32),
                        gpu.Allocate(new Shape(n, groups), DType.I8), k, Group);
                    var packed = new int[n * k / 8];
                    for (int i = 0; i < packed.Length; i++) packed[i] = Rng.Next();
                    var scales = Enumerable.Repeat(0.01f, n * groups).ToArray();
                    var zeros = Enumerable.Repeat((sbyte)8, n * groups).ToArray();
                    Int4Quantization.Write(gpu, q, packed, scales, zeros);
                    weights.Add(q);
                }
                using var scope = gpu.EnterInference();
                foreach (int m in rows)
                {
                    // The normalized lines take the RMSNorm in front (the decode step's QKV and gate/up): on the way or by the
                    // norm kernel first, as the options pick; bf16 through RmsNormMatMul and MatMulSwiGlu's norm. Their x is
                    // contiguous (the norm kernel's rows), the others' a slice of the 8192-wide buffer.
                    RmsNormPrologue? front = name.EndsWith(Normalized, StringComparison.Ordinal) ? norm : null;
                    var xm = front is null ? x.Slice(0, 0, m).Slice(1, 0, k) : xn.Slice(0, 0, m);
                    var ym = y.Slice(0, 0, m).Slice(1, 0, n);
                    var yc = gpu.Allocate(new Shape(m, n), DType.BF16);   // the SwiGLU ops' contiguous output
                    double ms = MedianMs(gpu, () =>
                    {
                        if (name.StartsWith(GateUp, StringComparison.Ordinal))
                            for (int l = 0; l < Layers; l++)
                            {
                                if (weights[2 * l] is QuantizedWeight g) gpu.QuantizedMatMulSwiGlu(xm, g, (QuantizedWeight)weights[2 * l + 1], yc, norm: front);
                                else gpu.MatMulSwiGlu(xm, (Tensor)weights[2 * l], (Tensor)weights[2 * l + 1], yc, norm: front);
                            }
                        else
                            foreach (var w in weights)
                            {
                                if (w is QuantizedWeight qw) gpu.QuantizedMatMul(xm, qw, front is null ? ym : yc, norm: front);
                                else if (front is { } r) gpu.RmsNormMatMul(xm, r, (Tensor)w, yc);
                                else gpu.MatMul(xm, (Tensor)w, ym, transposeB: true);
                            }
                    }, 10);
                    yc.Storage.Dispose();
                    us[(form, name, m)] = ms * 1e3 / Layers;
                    Assert.True(Download(gpu, y).All(double.IsFinite), $"{form} {name} M={m}: a non-finite output");
                }
                foreach (var w in weights)
                {
                    if (w is QuantizedWeight qw) { qw.Values.Storage.Dispose(); qw.Scales.Storage.Dispose(); qw.Zeros!.Storage.Dispose(); }
                    else ((Tensor)w).Storage.Dispose();
                }
            }
        }
        var lines = new List<string>
        {
            "| product | N x K | rows | " + string.Join(" | ", forms.Select(f => f.Name + " us")) + " | int4 (default) / bf16 |",
            "|---|---|---:|" + string.Concat(forms.Select(_ => "---:|")) + "---:|",
        };
        foreach (var (name, n, k) in products)
            foreach (int m in rows)
                lines.Add(string.Create(CultureInfo.InvariantCulture,
                    $"| {name} | {n} x {k} | {m} | {string.Join(" | ", forms.Select(f => us[(f.Name, name, m)].ToString("F2", CultureInfo.InvariantCulture)))} | {us[(forms[0].Name, name, m)] / us[("bf16", name, m)]:F2} |"));
        foreach (int m in rows)
            lines.Add(string.Create(CultureInfo.InvariantCulture,
                $"| a layer's four | | {m} | {string.Join(" | ", forms.Select(f => four.Sum(p => us[(f.Name, p.Name, m)]).ToString("F2", CultureInfo.InvariantCulture)))} | {four.Sum(p => us[(forms[0].Name, p.Name, m)]) / four.Sum(p => us[("bf16", p.Name, m)]):F2} |"));
        var table = string.Join("\n", lines) + "\n";
        TestContext.Current.TestOutputHelper?.WriteLine(table);
        var timings = Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS_OUT");
        if (!string.IsNullOrEmpty(timings))
            File.WriteAllText(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(timings))!, "int4-product-timings.md"), table);
    }
}
