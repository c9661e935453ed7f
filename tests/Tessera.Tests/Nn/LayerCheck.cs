using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Tests.Support;

namespace Tessera.Tests.Nn;

/// <summary>
/// Gradient checks for one layer in F64: the scalar loss is L = sum(y * R) for a fixed random R,
/// so dL/dy = R is what the layer's backward receives; every input and parameter element is
/// compared with a central difference of L (GradientCheck).
/// </summary>
internal sealed class LayerCheck
{
    // Central differences in F64 at h = 1e-5 are accurate to ~1e-10 relative (Support/GradientCheck),
    // so 1e-6 leaves room for rounding while catching any wrong term (those are O(1) relative).
    public const double Tolerance = 1e-6;

    private readonly IBackend _backend;
    private readonly Func<Tensor> _forward;
    private double[]? _r;

    /// <param name="forward">Runs the layer's forward in a non-saving pass on the current values and returns y.</param>
    public LayerCheck(IBackend backend, Func<Tensor> forward)
    {
        _backend = backend;
        _forward = forward;
    }

    /// <summary>R with y's shape, drawn once.</summary>
    public Tensor OutputGradient(Random rng, Tensor y)
    {
        _r ??= TestTensors.Normal(rng, y.NumElements);
        return TestTensors.FromDoubles(_backend, _r, DType.F64, y.Shape.ToArray());
    }

    private double Loss() => TestTensors.Dot(TestTensors.ToDoubles(_backend, _forward()), _r!);

    /// <summary>
    /// Checks the analytic gradient <paramref name="grad"/> of tensor <paramref name="value"/> (any of the layer's inputs
    /// or parameters): every element, or <paramref name="sample"/> distinct random elements drawn from <paramref name="rng"/>.
    /// </summary>
    public void Assert(Tensor value, Tensor grad, string what, int sample = int.MaxValue, Random? rng = null)
    {
        var values = TestTensors.ToDoubles(_backend, value);
        var grads = TestTensors.ToDoubles(_backend, grad);
        int[] index;
        if (sample >= values.Length) index = Enumerable.Range(0, values.Length).ToArray();
        else
        {
            var distinct = new HashSet<int>();                    // a repeated index would undo its own perturbation
            while (distinct.Count < sample) distinct.Add(rng!.Next(values.Length));
            index = distinct.ToArray();
        }
        var picked = index.Select(i => values[i]).ToArray();
        var analytic = index.Select(i => grads[i]).ToArray();
        Xunit.Assert.Contains(analytic, g => g != 0); // a gradient of zeros would pass vacuously on a constant loss
        GradientCheck.Assert(() =>
        {
            for (int k = 0; k < index.Length; k++) values[index[k]] = picked[k];
            TestTensors.Write(_backend, value, values);
            return Loss();
        }, picked, analytic, what, Tolerance);
        for (int k = 0; k < index.Length; k++) values[index[k]] = picked[k];
        TestTensors.Write(_backend, value, values);
    }

    /// <summary>Checks every parameter of <paramref name="arena"/> (all elements, or a random sample of each).</summary>
    public void AssertParameters(ParameterArena arena, int sample = int.MaxValue, Random? rng = null)
    {
        foreach (var p in arena.Parameters) Assert(p.Value, p.Grad, p.Name, sample, rng);
    }

    /// <summary>Fills every parameter with random values (norm scales around 1 so that they matter).</summary>
    public static void Randomize(IBackend backend, ParameterArena arena, Random rng)
    {
        foreach (var p in arena.Parameters)
        {
            double mean = p.Name.EndsWith(".weight", StringComparison.Ordinal) && !p.WeightDecay ? 1.0 : 0.0;
            TestTensors.Write(backend, p.Value, TestTensors.Normal(rng, p.NumElements, 0.3, mean));
        }
    }
}
