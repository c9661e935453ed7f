using Xunit.Sdk;

namespace Tessera.Tests.Support;

/// <summary>Comparisons of computed arrays against references, with the error measure stated.</summary>
public static class NumericAssert
{
    /// <summary>
    /// Norm-wise relative error max_i |actual_i - expected_i| / max_i |expected_i|: the error of each
    /// element measured against the array's scale, so near-zero elements do not blow it up.
    /// Any NaN or infinity in <paramref name="actual"/> gives +infinity.
    /// </summary>
    public static double MaxRelativeError(ReadOnlySpan<double> expected, ReadOnlySpan<double> actual)
    {
        if (expected.Length != actual.Length)
            throw new ArgumentException($"expected {expected.Length} values, got {actual.Length}");
        double maxDiff = 0, maxRef = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            if (!double.IsFinite(actual[i])) return double.PositiveInfinity;
            maxDiff = Math.Max(maxDiff, Math.Abs(actual[i] - expected[i]));
            maxRef = Math.Max(maxRef, Math.Abs(expected[i]));
        }
        return maxRef == 0 ? maxDiff : maxDiff / maxRef;
    }

    /// <summary>Fails unless <see cref="MaxRelativeError"/> is at most <paramref name="tolerance"/>; names the worst element.</summary>
    public static void Close(ReadOnlySpan<double> expected, ReadOnlySpan<double> actual, double tolerance, string what)
    {
        double err = MaxRelativeError(expected, actual);
        if (err <= tolerance) return;
        int worst = 0; double worstDiff = -1;
        for (int i = 0; i < expected.Length; i++)
        {
            double d = double.IsFinite(actual[i]) ? Math.Abs(actual[i] - expected[i]) : double.PositiveInfinity;
            if (d > worstDiff) { worstDiff = d; worst = i; }
        }
        throw new XunitException($"{what}: relative error {err:E3} exceeds {tolerance:E1}; worst element [{worst}] expected {expected[worst]:R}, got {actual[worst]:R} ({expected.Length} elements)");
    }
}
