namespace Tessera.Tests.Support;

/// <summary>The naive f64 product every matrix-product test compares against (batched, transposes, alpha/beta, bias).</summary>
internal static class ReferenceMatMul
{
    /// <summary>
    /// c (batch,m,n) = alpha * op(a) op(b) + beta * c0 + bias; a is (batch,m,k) or (batch,k,m) when <paramref name="ta"/>,
    /// b is (batch,k,n) or (batch,n,k) when <paramref name="tb"/>; <paramref name="c0"/> and <paramref name="bias"/> (n) may be null.
    /// </summary>
    public static double[] Compute(double[] a, double[] b, double[]? c0, int batch, int m, int n, int k,
        bool ta, bool tb, double alpha, double beta, double[]? bias)
    {
        var c = new double[batch * m * n];
        for (int z = 0; z < batch; z++)
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                {
                    double s = 0;
                    for (int p = 0; p < k; p++)
                    {
                        double av = ta ? a[z * m * k + p * m + i] : a[z * m * k + i * k + p];
                        double bv = tb ? b[z * k * n + j * k + p] : b[z * k * n + p * n + j];
                        s += av * bv;
                    }
                    int o = z * m * n + i * n + j;
                    c[o] = alpha * s + (c0 is null ? 0 : beta * c0[o]) + (bias is null ? 0 : bias[j]);
                }
        return c;
    }
}
