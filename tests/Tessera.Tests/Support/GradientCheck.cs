namespace Tessera.Tests.Support;

/// <summary>
/// Central finite-difference gradient checks in F64. A scalar loss L(input) is evaluated with one
/// input element moved by +h and -h; (L(x+h) - L(x-h)) / 2h has truncation error h^2 L'''/6
/// (about 1e-10 at h = 1e-5 for O(1) values) and rounding error about eps*|L|/h (about 1e-11),
/// so analytic gradients should agree to better than 1e-6 relative.
/// </summary>
public static class GradientCheck
{
    /// <summary>Default step: balances truncation (h^2) and rounding (eps/h) errors in F64.</summary>
    public const double DefaultStep = 1e-5;

    /// <summary>
    /// The numerical gradient of <paramref name="loss"/> with respect to <paramref name="input"/>:
    /// the loss must read <paramref name="input"/> each time it runs (it is perturbed in place
    /// and restored).
    /// </summary>
    public static double[] Numerical(Func<double> loss, double[] input, double step = DefaultStep)
    {
        ArgumentNullException.ThrowIfNull(loss); ArgumentNullException.ThrowIfNull(input);
        var grad = new double[input.Length];
        for (int i = 0; i < input.Length; i++)
        {
            double saved = input[i];
            input[i] = saved + step; double plus = loss();
            input[i] = saved - step; double minus = loss();
            input[i] = saved;
            grad[i] = (plus - minus) / (2 * step);
        }
        return grad;
    }

    /// <summary>
    /// Compares <paramref name="analyticGrad"/> with the central-difference gradient of <paramref name="loss"/>
    /// and returns the norm-wise relative error (see <see cref="NumericAssert.MaxRelativeError"/>).
    /// </summary>
    public static double Check(Func<double> loss, double[] input, double[] analyticGrad, double step = DefaultStep)
    {
        if (analyticGrad.Length != input.Length)
            throw new ArgumentException($"analytic gradient has {analyticGrad.Length} values for {input.Length} inputs");
        return NumericAssert.MaxRelativeError(Numerical(loss, input, step), analyticGrad);
    }

    /// <summary>Fails when <see cref="Check"/> exceeds <paramref name="tolerance"/>, naming the worst element.</summary>
    public static void Assert(Func<double> loss, double[] input, double[] analyticGrad, string what,
        double tolerance = 1e-6, double step = DefaultStep)
        => NumericAssert.Close(Numerical(loss, input, step), analyticGrad, tolerance, what);

    /// <summary>
    /// Directional check for large inputs: the central difference of L(x + e u) at e = 0 against
    /// the analytic &lt;grad, u&gt;, returned as |numerical - analytic| / max(|analytic|, tiny).
    /// Two loss evaluations instead of two per element.
    /// </summary>
    public static double CheckDirection(Func<double> loss, double[] input, double[] analyticGrad, double[] direction, double step = DefaultStep)
    {
        if (analyticGrad.Length != input.Length || direction.Length != input.Length)
            throw new ArgumentException($"input {input.Length}, gradient {analyticGrad.Length} and direction {direction.Length} lengths differ");
        var saved = (double[])input.Clone();
        for (int i = 0; i < input.Length; i++) input[i] = saved[i] + step * direction[i];
        double plus = loss();
        for (int i = 0; i < input.Length; i++) input[i] = saved[i] - step * direction[i];
        double minus = loss();
        Array.Copy(saved, input, input.Length);
        double numerical = (plus - minus) / (2 * step);
        double analytic = 0;
        for (int i = 0; i < input.Length; i++) analytic += analyticGrad[i] * direction[i];
        return Math.Abs(numerical - analytic) / Math.Max(Math.Abs(analytic), 1e-300);
    }
}
