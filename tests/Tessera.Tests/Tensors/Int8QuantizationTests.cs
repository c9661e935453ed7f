using Tessera.Tensors;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>Symmetric per-row int8 quantization on the host: the error bound, the row's largest weight kept, zeros, bad weights.</summary>
public class Int8QuantizationTests
{
    [Fact]
    public void EveryWeightIsWithinHalfAStepAndEachRowsLargestIsExact()
    {
        var rng = TestRandom.Create();
        const int rows = 37, cols = 301;
        var w = Array.ConvertAll(TestTensors.Normal(rng, rows * cols, 0.05), x => (float)x);
        w[5 * cols + 17] = 0.9f;                                     // an outlier row: its step is 0.9/127, the others' finer
        var q = new sbyte[w.Length];
        var s = new float[rows];
        Int8Quantization.QuantizeRows(w, rows, cols, q, s);
        for (int r = 0; r < rows; r++)
        {
            double max = 0;
            for (int c = 0; c < cols; c++) max = Math.Max(max, Math.Abs(w[r * cols + c]));
            Assert.Equal(max / 127, s[r], 1e-7 * max);
            int argmax = -1;
            for (int c = 0; c < cols; c++)
            {
                int i = r * cols + c;
                // Half a step, plus a few F32 roundings of the scale and the product (w / s is rounded once more than w * 127 / max).
                Assert.True(Math.Abs(w[i] - (double)s[r] * q[i]) <= s[r] * (0.5 + 1e-5), $"[{r}, {c}]: {w[i]} against {s[r]} x {q[i]}");
                if (Math.Abs(w[i]) == max) argmax = c;
            }
            Assert.Equal(127, Math.Abs((int)q[r * cols + argmax]));
        }
        Assert.Equal(0.9f, Int8Quantization.Dequantize(q, s, cols)[5 * cols + 17]);
    }

    [Fact]
    public void ARowOfZerosHasScaleZeroAndValuesZero()
    {
        float[] w = [0, 0, 0, 0, 1, -2, 0.5f, 0];
        var q = new sbyte[8];
        var s = new float[2];
        Int8Quantization.QuantizeRows(w, 2, 4, q, s);
        Assert.Equal(0f, s[0]);
        Assert.Equal(new sbyte[] { 0, 0, 0, 0, 64, -127, 32, 0 }, q);   // 1 / (2/127) = 63.5 rounds to even, 64
        Assert.Equal(2f / 127, s[1]);
    }

    [Fact]
    public void AWeightThatIsNotFiniteIsRefusedNamingItsPlace()
    {
        float[] w = [0, 1, 2, float.NaN];
        var e = Assert.Throws<ArgumentException>(() => Int8Quantization.QuantizeRows(w, 2, 2, new sbyte[4], new float[2], "blocks.0.mlp.fc.weight"));
        Assert.Contains("blocks.0.mlp.fc.weight", e.Message);
        Assert.Contains("[1, 1]", e.Message);
        Assert.Throws<ArgumentException>(() => Int8Quantization.QuantizeRows(w, 2, 3, new sbyte[4], new float[2]));
    }
}
