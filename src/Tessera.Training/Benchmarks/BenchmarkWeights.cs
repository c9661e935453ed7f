using Tessera.Models;
using Tessera.Nn;
using Tessera.Tensors;

namespace Tessera.Training.Benchmarks;

/// <summary>
/// A fast random initialization for benchmarks: uniform values with GPT-2's standard deviation (InitStd, residual
/// projections scaled by 1/sqrt(2L)), ones for norm weights, zeros for biases, filled on all cores.
/// <see cref="Transformer.InitializeWeights"/> draws Box-Muller normals one at a time (about 20 s for 1B parameters),
/// which would spend a GPU machine's time on the host; speed does not depend on the distribution.
/// </summary>
public static class BenchmarkWeights
{
    /// <summary>
    /// Fills every parameter of <paramref name="model"/> (its F32 masters under mixed precision) and casts the compute copy; a
    /// frozen BF16 base (LoRA), which has no masters, gets the same values rounded to BF16 on the host, and so do the BF16
    /// parameters of a quantized model, whose int8 weights quantize the F32 values. LoRA adapters keep the initialization the
    /// model gave them.
    /// </summary>
    /// <exception cref="NotSupportedException">The model's parameters are neither F32, F32 masters of BF16 values, nor frozen BF16.</exception>
    public static void Initialize(Transformer model, int seed)
    {
        ArgumentNullException.ThrowIfNull(model);
        var config = model.Config;
        double std = config.InitStd, residualStd = std / Math.Sqrt(2.0 * config.Layers);
        foreach (var p in model.Layout.Parameters)
            p.WriteMasterOrValue(target => Fill(model, p, target, seed, std, residualStd));   // the F32 master (separate or split) under mixed precision
    }

    private static void Fill(Transformer model, Parameter p, Tensor target, int seed, double std, double residualStd)
    {
        // A frozen BF16 base, or the BF16 norms and embeddings beside a quantized model's int8 weights (which take F32 and quantize it).
        bool valuesOnly = model.Layout.Storage is ParameterArena { Frozen: true } or Nn.Quantization.QuantizedParameterStorage;
        if (target.DType != DType.F32 && !(target.DType == DType.BF16 && valuesOnly))
            throw new NotSupportedException($"benchmark weights: {p.Name} is {target.DType}; benchmarks run F32, BF16 (F32 master) or frozen BF16 models");
        var values = new float[p.NumElements];
        bool isBias = p.Name.EndsWith(".bias", StringComparison.Ordinal);
        if (!isBias && !p.WeightDecay) Array.Fill(values, 1f);   // norm scales
        else if (!isBias)
        {
            double s = p.Name.EndsWith("proj.weight", StringComparison.Ordinal) ? residualStd : std;
            float a = (float)(s * Math.Sqrt(3.0));                // uniform(-a, a) has standard deviation s
            const int chunk = 1 << 20;
            int chunks = (values.Length + chunk - 1) / chunk;
            // One generator per chunk, seeded by (seed, parameter, chunk): the same values whatever the thread count, and in
            // every process (HashCode.Combine and string hashes are randomized per process: two runs that were meant to
            // start from the same weights did not, until 2026-12-03).
            ulong nameHash = StableHash(p.Name);
            System.Threading.Tasks.Parallel.For(0, chunks, c =>
            {
                var rng = new Random(ChunkSeed(seed, nameHash, c));
                int end = Math.Min(values.Length, (c + 1) * chunk);
                for (int i = c * chunk; i < end; i++) values[i] = a * (2f * rng.NextSingle() - 1f);
            });
        }
        if (target.DType == DType.F32) model.Backend.CopyFromHost<float>(values, target);
        else
        {
            var rounded = new BFloat16[values.Length];
            System.Threading.Tasks.Parallel.For(0, (values.Length + (1 << 20) - 1) >> 20, c =>
            {
                for (int i = c << 20, end = Math.Min(values.Length, (c + 1) << 20); i < end; i++) rounded[i] = BFloat16.FromSingle(values[i]);
            });
            model.Backend.CopyFromHost<BFloat16>(rounded, target);
        }
    }

    /// <summary>FNV-1a (64-bit) over the name's UTF-16 code units: the same in every process.</summary>
    internal static ulong StableHash(string name)
    {
        ulong h = 14695981039346656037UL;
        foreach (char ch in name) { h ^= ch; h *= 1099511628211UL; }
        return h;
    }

    /// <summary>A generator seed from (seed, parameter, chunk) through SplitMix64's finalizer, folded to a non-negative int.</summary>
    internal static int ChunkSeed(int seed, ulong nameHash, int chunk)
    {
        ulong z = SplitMix64.Next(nameHash ^ ((ulong)(uint)seed << 32 | (uint)chunk));
        return (int)(z & int.MaxValue);
    }
}
