using Xunit;
using Xunit.Sdk;

namespace Tessera.Tests.Support;

public class GradientCheckTests
{
    [Fact]
    public void ExactGradientOfACubicPassesWellBelowTheTolerance()
    {
        // L = sum x^3 + x0 x1: gradient 3x^2 (+ the cross terms); central differences err by h^2 = 1e-10.
        var x = new[] { 0.3, -1.2, 2.0, 0.7 };
        double Loss() => x.Sum(v => v * v * v) + x[0] * x[1];
        var grad = x.Select(v => 3 * v * v).ToArray();
        grad[0] += x[1]; grad[1] += x[0];
        Assert.True(GradientCheck.Check(Loss, x, grad) < 1e-9);
        Assert.Equal(new[] { 0.3, -1.2, 2.0, 0.7 }, x); // inputs restored
    }

    [Fact]
    public void AGradientWrongInOneElementByOnePartInAMillionFails()
    {
        var x = new[] { 0.5, 1.5, -0.25 };
        double Loss() => x.Sum(v => Math.Sin(v));
        var grad = x.Select(Math.Cos).ToArray();
        grad[2] *= 1 + 3e-6;
        Assert.Throws<XunitException>(() => GradientCheck.Assert(Loss, x, grad, "sin"));
    }
}
