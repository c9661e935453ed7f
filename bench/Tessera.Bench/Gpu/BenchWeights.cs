using Tessera.Models;
using Tessera.Tensors;

namespace Tessera.Bench.Gpu;

/// <summary>
/// A fast random initialization for benchmarks: uniform values with GPT-2's standard deviation (InitStd, residual
/// projections scaled by 1/sqrt(2L)), ones for norm weights, zeros for biases, filled on all cores.
/// <see cref="Transformer.InitializeWeights"/> draws Box-Muller normals one at a time (about 20 s for 1B parameters),
/// which would spend scarce GPU-machine time on the host; speed does not depend on the distribution.
/// </summary>
public static class BenchWeights
{
    /// <summary>Fills every parameter of <paramref name="model"/> (its F32 masters under mixed precision) and casts the compute copy.</summary>
    public static void Initialize(Transformer model, int seed)
    {
        var config = model.Config;
        double std = config.InitStd, residualStd = std / Math.Sqrt(2.0 * config.Layers);
        foreach (var p in model.Parameters.Parameters)
        {
            var values = new float[p.NumElements];
            bool isBias = p.Name.EndsWith(".bias", StringComparison.Ordinal);
            if (!isBias && !p.WeightDecay) Array.Fill(values, 1f);
            else if (!isBias)
            {
                double s = p.Name.EndsWith("proj.weight", StringComparison.Ordinal) ? residualStd : std;
                float a = (float)(s * Math.Sqrt(3.0));                // uniform(-a, a) has standard deviation s
                const int chunk = 1 << 20;
                int chunks = (values.Length + chunk - 1) / chunk;
                Parallel.For(0, chunks, c =>
                {
                    var rng = new Random(HashCode.Combine(seed, p.Name, c));
                    int end = Math.Min(values.Length, (c + 1) * chunk);
                    for (int i = c * chunk; i < end; i++) values[i] = a * (2f * rng.NextSingle() - 1f);
                });
            }
            var target = p.MasterOrValue;
            if (target.DType != DType.F32) throw new NotSupportedException($"BenchWeights: {p.Name} is {target.DType}; benchmarks run F32 or BF16 models");
            model.Backend.CopyFromHost<float>(values, target);
        }
        model.Parameters.SyncValuesFromMasters();
    }
}
