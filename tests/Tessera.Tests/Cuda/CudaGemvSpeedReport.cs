using System.Globalization;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Matrix-vector timings for docs/cuda-notes.md: the products of one Llama-1B decode step (bf16, one row of x), each run
/// over 16 distinct weight matrices in turn (as the 16 layers are), so the L2 (50 MB) cannot serve a repeat; then the four
/// products of a layer in decode order over 16 layers, the weight stream of a decode step without its attention. Runs only
/// when TESSERA_CUDA_TIMINGS=1; the table goes to the test output and to gemv-timings.md beside $TESSERA_CUDA_TIMINGS_OUT.
/// CUDA events around each pass, median of 10 after 3 warm-ups, in an inference scope as a decode step runs. Fails only far below what the kernels reached.
/// </summary>
[Collection("cuda")]
public sealed class CudaGemvSpeedReport(CudaFixture fixture) : CudaTestBase(fixture)
{
    private const int Layers = 16;

    [Fact]
    public void MatrixVectorProductsStreamTheWeights()
    {
        if (Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS") != "1") Assert.Skip("timings run only with TESSERA_CUDA_TIMINGS=1");
        const int c = 2048, f = 8192, kvHeads = 8, headDim = 64, vocab = 128256;
        int qkv = c + 2 * kvHeads * headDim;
        var x = Gpu.Allocate(new Shape(1, f), DType.BF16); Gpu.Fill(x, 0.01);
        var y = Gpu.Allocate(new Shape(1, vocab), DType.BF16);
        var normWeight = Gpu.Allocate(new Shape(c), DType.BF16); Gpu.Fill(normWeight, 1.0);
        var norm = new RmsNormPrologue(normWeight, 1e-5);
        Tensor[] Weights(int n, int k)
        {
            var w = new Tensor[Layers];
            for (int i = 0; i < w.Length; i++) { w[i] = Gpu.Allocate(new Shape(n, k), DType.BF16); Gpu.Fill(w[i], 0.001); }
            return w;
        }
        var wQkv = Weights(qkv, c); var wO = Weights(c, c); var wGate = Weights(f, c); var wUp = Weights(f, c); var wDown = Weights(c, f);
        var head = Gpu.Allocate(new Shape(vocab, c), DType.BF16); Gpu.Fill(head, 0.001);
        var cache = Gpu.Allocate(new Shape(1, 1024, 2 * kvHeads, headDim), DType.BF16);
        var positions = Gpu.Allocate(new Shape(1), DType.I32);
        Gpu.CopyFromHost<int>([640], positions);
        var xc = x.Slice(1, 0, c);
        var yc = y.Slice(1, 0, c);
        var yq = y.Slice(1, 0, qkv);
        var hf = y.Slice(1, 0, f);

        // As in a decode step (DecodeStep): nothing here writes a weight, so products may load weights before they wait.
        using var scope = Gpu.EnterInference();
        var lines = new List<string> { "| product | N x K | median us per call | GB/s | share of 3.0 TB/s |", "|---|---|---|---|---|" };
        double worst = double.MaxValue;
        void Row(string name, int n, int k, int weights, Action<int> call, int calls = Layers)
        {
            double ms = MedianMs(() => { for (int i = 0; i < calls; i++) call(i); }, 10);
            double us = ms * 1e3 / calls, bytes = (double)weights * n * k * 2;
            double gbs = bytes / (us * 1e-6) / 1e9;
            worst = Math.Min(worst, gbs);
            lines.Add(string.Create(CultureInfo.InvariantCulture, $"| {name} | {n} x {k}{(weights > 1 ? " x 2" : "")} | {us:F2} | {gbs:F0} | {gbs / 3000 * 100:F1} % |"));
        }
        Row("QKV (RMSNorm fused)", qkv, c, 1, i => Gpu.RmsNormMatMul(xc, norm, wQkv[i], yq));
        var qkvHeads = Gpu.Allocate(new Shape(1, 1, qkv / headDim, headDim), DType.BF16);
        Row("QKV + RoPE + KV append (RMSNorm fused)", qkv, c, 1,
            i => Gpu.MatMulRopeAppend(xc, norm, wQkv[i], null, qkvHeads, 32, cache, positions, 500000.0));
        Row("O (+= residual)", c, c, 1, i => Gpu.MatMul(xc, wO[i], yc, transposeB: true, beta: 1.0));
        Row("gate/up + SwiGLU (RMSNorm fused)", f, c, 2, i => Gpu.MatMulSwiGlu(xc, wGate[i], wUp[i], hf, norm: norm));
        Row("down (+= residual)", c, f, 1, i => Gpu.MatMul(x, wDown[i], yc, transposeB: true, beta: 1.0));
        Row("LM head (RMSNorm fused)", vocab, c, 1, _ => Gpu.RmsNormMatMul(xc, norm, head, y), 1);
        double layerMs = MedianMs(() =>
        {
            for (int i = 0; i < Layers; i++)
            {
                Gpu.MatMulRopeAppend(xc, norm, wQkv[i], null, qkvHeads, 32, cache, positions, 500000.0);
                Gpu.MatMul(xc, wO[i], yc, transposeB: true, beta: 1.0);
                Gpu.MatMulSwiGlu(xc, wGate[i], wUp[i], hf, norm: norm);
                Gpu.MatMul(x, wDown[i], yc, transposeB: true, beta: 1.0);
            }
        }, 10);
        double layerBytes = Layers * 2.0 * ((double)qkv * c + (double)c * c + 2.0 * f * c + (double)c * f);
        double layerGbs = layerBytes / (layerMs * 1e-3) / 1e9;
        lines.Add(string.Create(CultureInfo.InvariantCulture,
            $"| 16 layers' products in decode order | {layerBytes / 1e9:F2} GB | {layerMs * 1e3 / Layers:F2} per layer | {layerGbs:F0} | {layerGbs / 3000 * 100:F1} % |"));
        var table = string.Join("\n", lines) + "\n";
        TestContext.Current.TestOutputHelper?.WriteLine(table);
        var timings = Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS_OUT");
        if (!string.IsNullOrEmpty(timings))
            File.WriteAllText(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(timings))!, "gemv-timings.md"), table);
        foreach (var t in wQkv.Concat(wO).Concat(wGate).Concat(wUp).Concat(wDown).Append(head).Append(x).Append(y).Append(normWeight).Append(cache).Append(positions).Append(qkvHeads)) t.Storage.Dispose();
        // Loose guard: the first GEMV kernel streamed the narrowest of these at about 500 GB/s.
        Assert.True(worst > 300, $"a matrix-vector product streams its weights at only {worst:F0} GB/s\n{table}");
    }
}
