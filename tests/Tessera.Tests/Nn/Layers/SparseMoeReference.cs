using Tessera.Nn.Layers;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;

namespace Tessera.Tests.Nn.Layers;

/// <summary>
/// <see cref="SparseMoeFeedForward"/> written again with plain loops, independently of Tessera's code, for the layer tests
/// (<see cref="MixtureOfExpertsLayerTests"/>, <see cref="SharedExpertTests"/>) to compare against: per token the router's
/// softmax, the k experts of highest probability with ties to the lower index, their weights renormalized or not, the
/// weighted sum of their SwiGLUs, and (Qwen2-MoE) sigmoid(x · w_g) times the shared expert's SwiGLU.
/// </summary>
internal static class SparseMoeReference
{
    /// <summary>The layer's weights on the host: router (E, C); per expert gate, up (F, C) and proj (C, F); with a shared
    /// expert its gate, up (Fs, C), proj (C, Fs) and its gate (1, C), else null.</summary>
    public sealed record Weights(double[] Router, double[][] Gate, double[][] Up, double[][] Proj,
        double[]? SharedGate = null, double[]? SharedUp = null, double[]? SharedProj = null, double[]? SharedExpertGate = null);

    /// <summary>Reads <paramref name="moe"/>'s weights back to the host (the shared expert's when it has one).</summary>
    public static Weights Read(CpuBackend cpu, SparseMoeFeedForward moe) => new(
        TestTensors.ToDoubles(cpu, moe.Router.Weight.Value),
        moe.Experts.Select(x => TestTensors.ToDoubles(cpu, x.Gate.Weight.Value)).ToArray(),
        moe.Experts.Select(x => TestTensors.ToDoubles(cpu, x.Up.Weight.Value)).ToArray(),
        moe.Experts.Select(x => TestTensors.ToDoubles(cpu, x.Projection.Weight.Value)).ToArray(),
        moe.SharedExpert is null ? null : TestTensors.ToDoubles(cpu, moe.SharedExpert.Gate.Weight.Value),
        moe.SharedExpert is null ? null : TestTensors.ToDoubles(cpu, moe.SharedExpert.Up.Weight.Value),
        moe.SharedExpert is null ? null : TestTensors.ToDoubles(cpu, moe.SharedExpert.Projection.Weight.Value),
        moe.SharedExpertGate is null ? null : TestTensors.ToDoubles(cpu, moe.SharedExpertGate.Weight.Value));

    /// <summary>proj(SiLU(gate x) * up x) of row <paramref name="t"/> of x (.., C) through a SwiGLU of width <paramref name="f"/>.</summary>
    private static double[] SwiGlu(double[] x, int t, int c, double[] gate, double[] up, double[] proj, int f)
    {
        var a = new double[f];
        for (int i = 0; i < f; i++)
        {
            double g = 0, u = 0;
            for (int j = 0; j < c; j++) { g += gate[i * c + j] * x[t * c + j]; u += up[i * c + j] * x[t * c + j]; }
            a[i] = g / (1 + Math.Exp(-g)) * u;
        }
        var y = new double[c];
        for (int j = 0; j < c; j++)
            for (int i = 0; i < f; i++) y[j] += proj[j * f + i] * a[i];
        return y;
    }

    /// <summary>
    /// y (N, C) of x (N, C): the routed experts' weighted sum plus, when <paramref name="shared"/>, the gated shared expert;
    /// <paramref name="aux"/> = coefficient · E · Σ_e f_e P_e with f_e the tokens routed to e over N, P_e their mean
    /// probability; <paramref name="counts"/> the tokens each expert took.
    /// </summary>
    public static double[] Forward(double[] x, Weights w, int k, bool normalize, double coefficient, bool shared, out double aux, out int[] counts)
    {
        int experts = w.Gate.Length, c = w.Router.Length / experts, f = w.Gate[0].Length / c;
        int n = x.Length / c;
        var y = new double[n * c];
        var routed = new int[experts];
        var meanP = new double[experts];
        for (int t = 0; t < n; t++)
        {
            var z = new double[experts];
            for (int e = 0; e < experts; e++)
                for (int j = 0; j < c; j++) z[e] += w.Router[e * c + j] * x[t * c + j];
            double max = z.Max();
            var p = z.Select(v => Math.Exp(v - max)).ToArray();
            double sum = p.Sum();
            for (int e = 0; e < experts; e++) { p[e] /= sum; meanP[e] += p[e] / n; }
            // The k largest; equal probabilities go to the lower index (a stable sort by falling probability).
            var chosen = Enumerable.Range(0, experts).OrderByDescending(e => p[e]).ThenBy(e => e).Take(k).ToArray();
            double norm = normalize ? chosen.Sum(e => p[e]) : 1.0;
            foreach (int e in chosen)
            {
                routed[e]++;
                var o = SwiGlu(x, t, c, w.Gate[e], w.Up[e], w.Proj[e], f);
                for (int j = 0; j < c; j++) y[t * c + j] += p[e] / norm * o[j];
            }
            if (!shared) continue;
            double gz = 0;
            for (int j = 0; j < c; j++) gz += w.SharedExpertGate![j] * x[t * c + j];
            double g = 1 / (1 + Math.Exp(-gz));
            var s = SwiGlu(x, t, c, w.SharedGate!, w.SharedUp!, w.SharedProj!, w.SharedGate!.Length / c);
            for (int j = 0; j < c; j++) y[t * c + j] += g * s[j];
        }
        aux = coefficient * experts * Enumerable.Range(0, experts).Sum(e => (double)routed[e] / n * meanP[e]);
        counts = routed;
        return y;
    }
}
