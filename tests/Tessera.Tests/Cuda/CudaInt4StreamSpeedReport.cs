using System.Globalization;
using Tessera.Cuda;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The int4 matrix-vector stream (gemv.cu's <c>gemv_stream_int4</c>) timed on the products of one Llama-1B decode layer (one
/// bf16 row of x, int4 weights in groups of 128: QKV 3072 x 2048 with the RMSNorm staged, O 2048 x 2048 += the residual, gate
/// (and up) 8192 x 2048 with the norm, down 2048 x 8192 += the residual), each run over 16 distinct weights in turn (as the
/// 16 layers are), so the L2 cannot serve a repeat; then the five products of a layer in decode order over 16 layers. Three
/// times, each on a backend of its own: the defaults (wide units of several rows, <see cref="CudaBackendOptions.Int4StreamRowsPerUnit"/>
/// unset), the narrow units of several rows (<see cref="CudaBackendOptions.Int4StreamWideUnits"/> off), and the first form's
/// narrow one-row units (<c>Int4StreamRowsPerUnit=1</c>, <c>gemv_stream_int4_narrow_*</c>).
/// The bytes counted are what the stream reads: the packed nibbles (K / 2 a row) plus the scales (4 bytes a group) and zeros
/// (1). Also prints each kernel's registers and local memory (spills) under its launch bounds. Runs only when
/// TESSERA_CUDA_TIMINGS=1; the table goes to the test output and to int4-stream-timings.md beside $TESSERA_CUDA_TIMINGS_OUT.
/// CUDA events around each pass, median of 10 after 3 warm-ups, in an inference scope as a decode step runs. Not a pass/fail
/// bar beyond a loose floor.
/// </summary>
[Collection("cuda")]
public sealed class CudaInt4StreamSpeedReport(CudaFixture fixture) : CudaTestBase(fixture)
{
    private const int Layers = 16, Group = 128, Hidden = 2048, Ffn = 8192, Qkv = Hidden + 2 * 8 * 64;

    [Fact]
    public void Int4StreamReadsTheWeightsWithUnitsOfSeveralRowsAndOfOne()
    {
        if (Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS") != "1") Assert.Skip("timings run only with TESSERA_CUDA_TIMINGS=1");
        var lines = new List<string>
        {
            "| product | N x K | rows a unit | median us per call | GB/s | share of 3.0 TB/s |",
            "|---|---|---|---|---|---|",
        };
        var resources = new List<string> { "", "| kernel | registers | local bytes | CTAs per SM |", "|---|---|---|---|" };
        double worst = double.MaxValue;
        var settings = new[]
        {
            ("auto", CudaBackendOptions.Default),
            ("auto, narrow units", CudaBackendOptions.Default with { Int4StreamWideUnits = false }),
            ("1 (first form)", CudaBackendOptions.Default with { Int4StreamRowsPerUnit = 1 }),
        };
        foreach (var (label, options) in settings)
        {
            using var gpu = new CudaBackend(Gpu.CudaDevice.Ordinal, options);
            worst = Math.Min(worst, Time(gpu, label, lines));
            if (label != "auto") continue;
            var module = gpu.Kernels.Module("gemv.cu");
            foreach (var form in new[] { "", "narrow_" })
                for (int m = 1; m <= 4; m++)
                {
                    string name = $"gemv_stream_int4_{form}bf16_m{m}";
                    var r = module.Resources(name, 256, m * Ffn * 2);   // x staged at K = 8192
                    resources.Add($"| {name} | {r.Registers} | {r.LocalBytes} | {r.CtasPerSm} |");
                }
        }
        var table = string.Join("\n", lines.Concat(resources)) + "\n";
        TestContext.Current.TestOutputHelper?.WriteLine(table);
        var timings = Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS_OUT");
        if (!string.IsNullOrEmpty(timings))
            File.WriteAllText(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(timings))!, "int4-stream-timings.md"), table);
        // Loose guard: the first form streamed llama-1b's int4 decode at about 930 GB/s (docs/benchmarks.md, session 31).
        Assert.True(worst > 200, $"the int4 stream reads its weights at only {worst:F0} GB/s\n{table}");
    }

    /// <summary>The rows of <paramref name="lines"/> for one backend's setting; returns the lowest GB/s of its products.</summary>
    private static double Time(CudaBackend gpu, string label, List<string> lines)
    {
        var x = gpu.Allocate(new Shape(1, Ffn), DType.BF16); gpu.Fill(x, 0.01);
        var y = gpu.Allocate(new Shape(1, Ffn), DType.BF16); gpu.Fill(y, 0);
        var normWeight = gpu.Allocate(new Shape(Hidden), DType.BF16); gpu.Fill(normWeight, 1.0);
        var norm = new RmsNormPrologue(normWeight, 1e-5);
        var owned = new List<Tensor> { x, y, normWeight };
        QuantizedWeight[] Weights(int n, int k)
        {
            var w = new QuantizedWeight[Layers];
            int groups = k / Group;
            for (int i = 0; i < w.Length; i++)
            {
                Tensor packed = gpu.Allocate(new Shape(n, k / 8), DType.I32), scales = gpu.Allocate(new Shape(n, groups), DType.F32),
                    zeros = gpu.Allocate(new Shape(n, groups), DType.I8);
                gpu.Fill(packed, 0x12345678); gpu.Fill(scales, 0.001); gpu.Fill(zeros, 0);
                owned.AddRange([packed, scales, zeros]);
                w[i] = QuantizedWeight.Int4(packed, scales, zeros, k, Group);
            }
            return w;
        }
        var wQkv = Weights(Qkv, Hidden); var wO = Weights(Hidden, Hidden); var wGate = Weights(Ffn, Hidden); var wUp = Weights(Ffn, Hidden);
        var wDown = Weights(Hidden, Ffn);
        var xc = x.Slice(1, 0, Hidden);
        var yc = y.Slice(1, 0, Hidden);
        var yq = y.Slice(1, 0, Qkv);
        static double Bytes(int n, int k) => (double)n * k / 2 + (double)n * (k / Group) * 5;   // nibbles, fp32 scales, int8 zeros

        double worst = double.MaxValue;
        void Row(string name, int n, int k, Action<int> call)
        {
            double ms = MedianMs(gpu, () => { for (int i = 0; i < Layers; i++) call(i); }, 10);
            double us = ms * 1e3 / Layers, gbs = Bytes(n, k) / (us * 1e-6) / 1e9;
            worst = Math.Min(worst, gbs);
            lines.Add(string.Create(CultureInfo.InvariantCulture, $"| {name} | {n} x {k} | {label} | {us:F2} | {gbs:F0} | {gbs / 3000 * 100:F1} % |"));
        }
        // As in a decode step (DecodeStep): nothing here writes a weight, so products may load weights before they wait.
        using (gpu.EnterInference())
        {
            Row("QKV (RMSNorm staged)", Qkv, Hidden, i => gpu.QuantizedMatMul(xc, wQkv[i], yq, norm: norm));
            Row("O (+= residual)", Hidden, Hidden, i => gpu.QuantizedMatMul(xc, wO[i], yc, beta: 1.0));
            Row("gate or up (RMSNorm staged)", Ffn, Hidden, i => gpu.QuantizedMatMul(xc, wGate[i], y, norm: norm));
            Row("down (+= residual)", Hidden, Ffn, i => gpu.QuantizedMatMul(x, wDown[i], yc, beta: 1.0));
            double layerMs = MedianMs(gpu, () =>
            {
                for (int i = 0; i < Layers; i++)
                {
                    gpu.QuantizedMatMul(xc, wQkv[i], yq, norm: norm);
                    gpu.QuantizedMatMul(xc, wO[i], yc, beta: 1.0);
                    gpu.QuantizedMatMul(xc, wGate[i], y, norm: norm);
                    gpu.QuantizedMatMul(xc, wUp[i], y, norm: norm);
                    gpu.QuantizedMatMul(x, wDown[i], yc, beta: 1.0);
                }
            }, 10);
            double layerBytes = Layers * (Bytes(Qkv, Hidden) + Bytes(Hidden, Hidden) + 2 * Bytes(Ffn, Hidden) + Bytes(Hidden, Ffn));
            double layerGbs = layerBytes / (layerMs * 1e-3) / 1e9;
            lines.Add(string.Create(CultureInfo.InvariantCulture,
                $"| 16 layers' products in decode order | {layerBytes / 1e9:F3} GB | {label} | {layerMs * 1e3 / Layers:F2} per layer | {layerGbs:F0} | {layerGbs / 3000 * 100:F1} % |"));
        }
        foreach (var t in owned) t.Storage.Dispose();
        return worst;
    }
}
