using System.Globalization;
using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Training;

namespace Tessera.Cli.Commands.Train;

/// <summary>
/// What <c>tessera train --print-memory</c> prints before anything is built: the activation bytes one rank keeps per
/// micro-batch between forward and backward (<see cref="ActivationMemory"/>, buffer by buffer), the buffers shared by all
/// micro-batches, and Korthikanti et al.'s per-layer formula for the same layout beside it.
/// </summary>
public static class MemoryPlan
{
    private const double Mib = 1 << 20;

    /// <summary>Prints the estimate for <paramref name="config"/> under the run's layout; returns the exit code.</summary>
    public static int Print(Terminal terminal, TrainSettings settings, TransformerConfig config, TrainerOptions options, DType dtype)
    {
        int tp = settings.TensorParallel, b = options.BatchSize, t = options.SequenceLength;
        ActivationMemory estimate;
        try
        {
            estimate = ActivationMemory.Estimate(config, b, t, dtype, tp, settings.SequenceParallel, settings.Recompute);
        }
        catch (ArgumentException e)
        {
            throw new UsageException($"--print-memory: {e.Message}");
        }
        string layout = tp == 1 ? "one device" : $"tp {tp}{(settings.SequenceParallel ? " with sequence parallelism" : "")}";
        terminal.Line($"activation memory per rank ({layout}{(settings.Recompute ? ", recomputed blocks" : "")}), {dtype}: a micro-batch of {b} x {t} tokens " +
            $"(N = {b * t}{(settings.SequenceParallel && tp > 1 ? $", R = N / tp = {b * t / tp} rows of the residual stream" : "")}), {config.Layers} blocks");
        terminal.Line();
        terminal.Line("| kept per micro-batch | shape | bytes | count | MiB |");
        terminal.Line("|---|---|---|---|---|");
        foreach (var item in estimate.Items)
            terminal.Line(string.Create(CultureInfo.InvariantCulture, $"| {item.Name} | {item.Shape} | {item.Bytes:N0} | {item.Count} | {item.TotalBytes / Mib:F2} |"));
        foreach (var item in estimate.Shared)
            terminal.Line(string.Create(CultureInfo.InvariantCulture, $"| shared: {item.Name} | {item.Shape} | {item.Bytes:N0} | {item.Count} | {item.TotalBytes / Mib:F2} |"));
        terminal.Line();
        long megatron = estimate.MegatronBytesPerLayer * config.Layers;
        terminal.Line(string.Create(CultureInfo.InvariantCulture,
            $"per micro-batch {estimate.PerMicroBatchBytes / Mib:F1} MiB ({estimate.PerBlockBytes / Mib:F2} MiB a block), shared {estimate.SharedBytes / Mib:F1} MiB; " +
            $"micro-batches in flight multiply the first (1 without a pipeline; a 1F1B stage s of p holds p - s)"));
        terminal.Line(string.Create(CultureInfo.InvariantCulture,
            $"Megatron's formula for the same layout (Korthikanti et al. 2022: 16-bit, dropout, attention scores kept): {estimate.MegatronBytesPerLayer / Mib:F2} MiB a layer, " +
            $"{megatron / Mib:F1} MiB for {config.Layers}; the difference is explained in docs/architecture.md (activation memory)"));
        return ExitCodes.Success;
    }
}
