using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Parallel;

namespace Tessera.Bench.Training;

/// <summary>
/// The host half of ZeRO-Offload's update on the CPU backend: AdamW over F32 masters and moments (with and without
/// writing the BF16 copy), the BF16/F32 casts of gradients and values, and the whole host update of one BF16 piece
/// (staged BF16 gradient in, staged BF16 values out) both unfused (copy, widen, AdamW with the BF16 copy, copy: what
/// <see cref="OffloadedAdamW"/> did before the fused kernel) and fused (<see cref="CpuBackend.AdamWStaged"/>), over 16M elements. GB/s counts the bytes each op must move (AdamW:
/// master, gradient, m, v read and master, m, v written, 28 bytes per element, +2 for the copy; a BF16 piece: the BF16
/// gradient read, master, m, v read and written, the BF16 value written, 28 bytes). Last, one
/// <see cref="OffloadedAdamW.Update"/> of a whole BF16 gpt2-124m arena whose "device" is a CPU backend too (its copies
/// are memory copies), in the default pieces, unfused and fused.
/// <para>Usage: host-optimizer [--threads N] [--elements N] [--preset NAME]</para>
/// </summary>
public static class HostOptimizerBench
{
    /// <summary>Entry point; returns the process exit code.</summary>
    public static int Run(string[] args)
    {
        int threads = Environment.ProcessorCount, n = 1 << 24;
        string preset = "gpt2-124m";
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--threads": threads = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--elements": n = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--preset": preset = args[++i]; break;
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
        var toHost = new byte[2L * n];     // a piece's staged BF16 gradient
        var toDevice = new byte[2L * n];   // a piece's staged BF16 values
        MemoryMarshal.Cast<byte, BFloat16>(toHost.AsSpan()).Fill(BFloat16.FromSingle(0.01f));
        var step = new AdamWStep { Step = 1, LearningRate = 1e-4, Beta1 = 0.9, Beta2 = 0.95, Epsilon = 1e-8, WeightDecay = 0.1 };
        Console.WriteLine($"| op | elements | threads | ms (median of 7) | GB/s |");
        Console.WriteLine("|---|---|---|---|---|");
        Time("AdamW, F32 masters", n, () => cpu.AdamW(p, g, m, v, step), 28.0);
        Time("AdamW, F32 masters + BF16 copy", n, () => cpu.AdamW(p, g, m, v, step, null, low), 30.0);
        Time("cast BF16 -> F32 (gradients)", n, () => cpu.Copy(low, g), 6.0);
        Time("cast F32 -> BF16 (values)", n, () => cpu.Copy(g, low), 6.0);
        Time("BF16 piece, unfused (copy, widen, AdamW + copy, copy)", n, () =>
        {
            cpu.CopyFromHost<BFloat16>(MemoryMarshal.Cast<byte, BFloat16>(toHost.AsSpan()), low);
            cpu.Copy(low, g);
            cpu.AdamW(p, g, m, v, step, null, low);
            cpu.CopyToHost(low, MemoryMarshal.Cast<byte, BFloat16>(toDevice.AsSpan()));
        }, 28.0);
        Time("BF16 piece, fused (AdamWStaged)", n, () => cpu.AdamWStaged(p, toHost, m, v, toDevice, DType.BF16, step), 28.0);
        foreach (var t in new[] { p, g, m, v, low }) t.Storage.Dispose();

        // The whole offloaded update of a BF16 model: one rank, default pieces, global-norm clipping on.
        var device = new CpuBackend(threads);
        var model = new Transformer(ModelPresets.Get(preset), device, DType.BF16);
        model.InitializeWeights(seed: 1);
        var arena = model.Parameters;
        device.Fill(arena.Grads, 0.01);
        var layout = new ShardLayout(model.Layout, ZeroStage.None, 1, 0, bucketElements: 1L << 24);
        var sum = device.FromHost<float>([4f], new Shape(1));
        var clipped = step with { MaxGradNorm = 1.0 };
        foreach (bool fuse in new[] { false, true })
        {
            var offload = new OffloadedAdamW(arena, layout, cpu, OffloadedAdamW.DefaultPieceElements, fuse);
            Time($"OffloadedAdamW.Update, {preset} BF16 arena, {(fuse ? "fused" : "unfused")} ({offload.PieceCount} pieces)", arena.Length,
                () => offload.Update(r => arena.Grads.Narrow(r.ArenaOffset, new Shape((int)r.Length)), sum, r => clipped with { WeightDecay = r.WeightDecay ? 0.1 : 0 }),
                28.0);
        }
        return 0;

        void Time(string what, long elements, Action op, double bytesPerElement)
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
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {what} | {elements:N0} | {threads} | {ms:F1} | {elements * bytesPerElement / (ms / 1000) / 1e9:F1} |"));
        }
    }
}
