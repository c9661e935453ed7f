using System.Diagnostics;
using System.Globalization;
using Tessera.Cuda;
using Tessera.Inference;
using Tessera.Models;
using Tessera.Tensors;

namespace Tessera.Bench.Gpu;

/// <summary>
/// Generation on one GPU through <see cref="TextGenerator"/> (KV cache, greedy sampling on the host): a random prompt
/// is prefilled, then tokens are decoded one at a time. Prefill tokens/s = prompt length / time to the first token;
/// decode tokens/s = (new tokens - 1) / time from the first to the last token. Achieved bandwidth counts, per decoded
/// token, every weight once (the tied head reads the whole embedding) plus the keys and values of every cached
/// position, over the decode time, as a share of 3.0 TB/s (what a device copy reaches on the H100).
/// <para>Usage: gpu-decode [--preset llama-1b] [--dtype bf16|f32] [--prompt 512] [--new 256] [--repeat 2]</para>
/// </summary>
public static class GpuDecodeBench
{
    /// <summary>Entry point; returns the process exit code.</summary>
    public static int Run(string[] args)
    {
        string preset = "llama-1b", dtypeName = "bf16";
        int promptLength = 512, newTokens = 256, repeat = 2;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--preset": preset = args[++i]; break;
                case "--dtype": dtypeName = args[++i]; break;
                case "--prompt": promptLength = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--new": newTokens = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--repeat": repeat = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                default: throw new ArgumentException($"gpu-decode: unknown argument '{args[i]}'");
            }
        }
        var dtype = dtypeName switch { "bf16" => DType.BF16, "f32" => DType.F32, _ => throw new ArgumentException($"--dtype {dtypeName}: expected bf16 or f32") };
        using var backend = new CudaBackend();
        var config = ModelPresets.Get(preset);
        var model = new Transformer(config, backend, dtype) { ValidateInputs = false };
        BenchWeights.Initialize(model, seed: 2);
        var rng = new Random(3);
        var prompt = Enumerable.Range(0, promptLength).Select(_ => rng.Next(config.VocabSize)).ToArray();
        var generator = new TextGenerator(model);
        var options = new GenerationOptions { MaxNewTokens = newTokens };
        double prefillMs = 0, decodeMs = 0;
        int produced = 0;
        for (int r = 0; r < repeat; r++)   // the first round compiles kernels and grows the allocator's pool
        {
            var clock = Stopwatch.StartNew();
            double first = 0;
            produced = 0;
            foreach (var _ in generator.Generate(prompt, options))
            {
                if (produced++ == 0) first = clock.Elapsed.TotalMilliseconds;
            }
            prefillMs = first;
            decodeMs = clock.Elapsed.TotalMilliseconds - first;
        }
        if (produced != newTokens) throw new InvalidOperationException($"gpu-decode: produced {produced} tokens, expected {newTokens}");
        int decoded = produced - 1;
        long elementBytes = dtype.SizeInBytes();
        double weightBytes = (double)model.Parameters.ParameterCount * elementBytes;
        double kvBytes = 0;   // over all decoded tokens: 2 (K and V) * L * cached positions * K heads * D
        for (int i = 1; i <= decoded; i++) kvBytes += 2.0 * config.Layers * (promptLength + i) * config.EffectiveKvHeads * config.HeadSize * elementBytes;
        double seconds = decodeMs / 1000;
        double bandwidth = (weightBytes * decoded + kvBytes) / seconds;
        Console.WriteLine("| system | model | dtype | prompt | new | prefill ms | prefill tokens/s | decode ms/token | decode tokens/s | GB/s | share of 3.0 TB/s | peak GiB |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"| Tessera | {preset} | {dtype} | {promptLength} | {newTokens} | {prefillMs:F1} | {promptLength / (prefillMs / 1000):F0} | {decodeMs / decoded:F2} | {decoded / seconds:F1} | {bandwidth / 1e9:F0} | {bandwidth / 3.0e12:P1} | {backend.Allocator.Statistics.PeakBytesInUse / (double)(1L << 30):F1} |"));
        return 0;
    }
}
