namespace Tessera.Tests.Cuda;

/// <summary>The fused cross-entropy's f64 reference, shared by the CUDA cross-entropy tests.</summary>
internal static class CrossEntropyReference
{
    /// <summary>
    /// Loss and gradient of rows of logits <paramref name="stride"/> apart, the first <paramref name="v"/> of each used: loss
    /// = log(sum exp) - x[target] (with the row's maximum subtracted first), gradient (softmax - one-hot) * scale. A row whose
    /// target is negative (ignored) has loss 0 and gradient 0; a target at or past V gives a NaN loss and the softmax alone as
    /// gradient. The gradient array has the logits' layout, its padding columns holding the logits' values (the kernels leave
    /// them).
    /// </summary>
    public static (double[] Loss, double[] Grad) Of(double[] values, int[] targets, int v, int stride, double scale)
    {
        int rows = targets.Length;
        var loss = new double[rows];
        var grad = (double[])values.Clone();
        for (int r = 0; r < rows; r++)
        {
            var row = values.AsSpan(r * stride, v);
            if (targets[r] < 0) { Array.Clear(grad, r * stride, v); continue; }
            double m = double.NegativeInfinity, s = 0;
            foreach (double x in row) m = Math.Max(m, x);
            foreach (double x in row) s += Math.Exp(x - m);
            loss[r] = targets[r] < v ? Math.Log(s) + m - row[targets[r]] : double.NaN;
            for (int i = 0; i < v; i++) grad[r * stride + i] = (Math.Exp(row[i] - m) / s - (i == targets[r] ? 1 : 0)) * scale;
        }
        return (loss, grad);
    }
}
