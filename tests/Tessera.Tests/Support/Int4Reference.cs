using Tessera.Tensors;

namespace Tessera.Tests.Support;

/// <summary>What a group-wise int4 weight stands for, by the tests' own loop over the packed layout (independent of the
/// backends' dequantization): w[r, c] = scale (q - zero) of c's group, q the nibble 4 (c mod 8) of word c / 8 of row r; with an
/// input order, stored column j is input order[j] (w[r, order[j]] is the stored column's value).</summary>
internal static class Int4Reference
{
    /// <summary>The (Rows, Columns) values of <paramref name="q"/>, row-major, in double (exact: an F32 scale times a small integer).</summary>
    public static double[] StandsFor(QuantizedWeight q, IBackend backend)
    {
        var packed = backend.ToArray<int>(q.Values);
        var scales = backend.ToArray<float>(q.Scales);
        var zeros = backend.ToArray<sbyte>(q.Zeros!);
        int k = q.Columns;
        var order = q.InputOrder is { } o ? backend.ToArray<int>(o) : Enumerable.Range(0, k).ToArray();
        var w = new double[q.Rows * k];
        for (int r = 0; r < q.Rows; r++)
            for (int c = 0; c < k; c++)
            {
                int g = r * q.Groups + c / q.GroupSize;
                w[r * k + order[c]] = (double)scales[g] * (((packed[r * (k / 8) + c / 8] >> (4 * (c % 8))) & 0xF) - zeros[g]);
            }
        return w;
    }
}
