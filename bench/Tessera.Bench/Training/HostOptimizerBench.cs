using System.Diagnostics;
using System.Globalization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;

namespace Tessera.Bench.Training;

/// <summary>
/// The host half of ZeRO-Offload's update on the CPU backend: AdamW over F32 masters and moments (with and without
/// writing the BF16 copy) and the BF16/F32 casts of gradients and values, over 16M elements. GB/s counts the bytes each
/// op must move (AdamW: master, gradient, m, v read and master, m, v written, 28 bytes per element, +2 for the copy).
/// <para>Usage: host-optimizer [--threads N] [--elements N]</para>
/// </summary>
public static class HostOptimizerBench
{
    /// <summary>Entry point; returns the process exit code.</summary>
    public static int Run(string[] args)
    {
        int threads = Environment.ProcessorCount, n = 1 << 24;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--threads": threads = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--elements": n = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                default: throw new ArgumentException($"host-optimizer: unknown argument '{args[i]}'");
            }
        }
        var cpu = new CpuBackend(threads);
        var p = cpu.Allocate(new Shape(n), DType.F32);
        var g = cpu.Allocate(new Shape(n), DType.F32);
        var m = cpu.Allocate(new Shape(n), DType.F32);
        var v = cpu.Allocate(new Shape(n), DType.F32);
        var low = cpu.Allocate(new Shape(n), DType.BF16);
        cpu.Fill(p, 0.5);
        cpu.Fill(g, 0.01);
        var step = new AdamWStep { Step = 1, LearningRate = 1e-4, Beta1 = 0.9, Beta2 = 0.95, Epsilon = 1e-8, WeightDecay = 0.1 };
        Console.WriteLine($"| op | elements | threads | ms (median of 7) | GB/s |");
        Console.WriteLine("|---|---|---|---|---|");
        Time("AdamW, F32 masters", () => cpu.AdamW(p, g, m, v, step), 28.0);
        Time("AdamW, F32 masters + BF16 copy", () => cpu.AdamW(p, g, m, v, step, null, low), 30.0);
        Time("cast BF16 -> F32 (gradients)", () => cpu.Copy(low, g), 6.0);
        Time("cast F32 -> BF16 (values)", () => cpu.Copy(g, low), 6.0);
        return 0;

        void Time(string what, Action op, double bytesPerElement)
        {
            op();
            var times = new List<double>();
            for (int i = 0; i < 7; i++)
            {
                var clock = Stopwatch.StartNew();
                op();
                times.Add(clock.Elapsed.TotalMilliseconds);
            }
            times.Sort();
            double ms = times[3];
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {what} | {n:N0} | {threads} | {ms:F1} | {n * bytesPerElement / (ms / 1000) / 1e9:F1} |"));
        }
    }
}
