using System.CommandLine;
using Tessera.Models.Adapters;
using Tessera.Training.Checkpoints;

namespace Tessera.Cli.CommandLine;

/// <summary>
/// --adapter DIR of generate and serve: a PEFT LoRA adapter (what <c>tessera train --lora</c> writes to OUT/adapter) merged into
/// the model's weights as they load, the merge <c>tessera export</c> writes (<see cref="LoraWeightMerge"/>), so that no merged copy
/// has to be exported first.
/// </summary>
public static class AdapterOption
{
    /// <summary>The option.</summary>
    public static Option<string?> Create() => new("--adapter")
    {
        Description = "a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors, e.g. a LoRA run's OUT/adapter) " +
            "merged into --model's weights as they load (W += alpha/r B A, as 'tessera export' merges), before --dtype, --quantize " +
            "and --tp; --model must be the base it was trained on (a Hugging Face directory or a checkpoint of that architecture); " +
            "a --draft-model stays unadapted",
        HelpName = "DIR",
    };

    /// <summary>
    /// Checks <paramref name="adapter"/> against the model <paramref name="model"/> names, reading no weight: a missing directory
    /// or file, a malformed adapter_config.json, target modules the model lacks or tensors of other shapes (an adapter trained for
    /// another model) are usage errors naming the option and what is wrong, before anything loads. Returns the adapter for the log.
    /// </summary>
    public static LoraWeightMerge Check(string model, string adapter)
    {
        if (!Directory.Exists(adapter)) throw new UsageException($"--adapter {adapter}: not a directory (give a PEFT adapter directory: adapter_config.json and adapter_model.safetensors)");
        var directory = TrainedModel.Resolve(model);   // the model's own problems are reported as loading reports them
        try
        {
            return TrainedModel.CheckAdapter(directory, adapter);
        }
        catch (Exception e) when (e is InvalidDataException or FileNotFoundException or NotSupportedException)
        {
            throw new UsageException($"--adapter {adapter} does not apply to --model {model}: {e.Message}");
        }
    }
}
