using System.CommandLine;
using Tessera.Models.Adapters;
using Tessera.Training.Checkpoints;

namespace Tessera.Cli.CommandLine;

/// <summary>
/// --lora NAME=DIR of serve, repeatable: PEFT LoRA adapters served unmerged over --model, each under its own model name
/// (multi-LoRA, as vLLM's --lora-modules): a request's model field picks the base or an adapter, and requests for any of them share
/// the continuous batch.
/// </summary>
public static class LoraModulesOption
{
    /// <summary>The option.</summary>
    public static Option<string[]> Create() => new("--lora")
    {
        Description = "serve a PEFT LoRA adapter directory (e.g. a LoRA run's OUT/adapter) unmerged over --model under the model name NAME; " +
            "repeatable: requests name the base or any adapter in their model field and share one batch (steps with adapter rows run " +
            "without CUDA graphs); with --tp each rank holds its share of every adapter; not with --draft-model or --adapter",
        HelpName = "NAME=DIR",
        AllowMultipleArgumentsPerToken = false,
    };

    /// <summary>
    /// The adapters <paramref name="values"/> name, checked before anything loads: each NAME=DIR well formed, names distinct and
    /// none the served model's own <paramref name="servedName"/>, no draft model or merged --adapter beside them (tensor
    /// parallelism, <paramref name="tp"/>, is fine: each rank holds its share of every adapter), and each adapter fitting the model <paramref name="model"/> names (files, target modules, tensor shapes). Every
    /// problem is a usage error naming the option. With <paramref name="slots"/>' runtime loading on, the same limits hold with no
    /// --lora at all (the base alone at start), and the slots must hold the start-up adapters (count and rank).
    /// </summary>
    public static IReadOnlyList<LoraModule> Check(string[] values, string model, string servedName, int tp, string? draftModel, string? adapter,
        Tessera.Models.Adapters.LoraSlotOptions? slots = null)
    {
        ArgumentNullException.ThrowIfNull(values);
        var modules = new List<LoraModule>();
        foreach (var value in values)
        {
            int eq = value.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0 || eq == value.Length - 1)
                throw new UsageException($"--lora {value}: give NAME=DIR, the model name requests use and the PEFT adapter directory (e.g. --lora sql=runs/sql/adapter)");
            string name = value[..eq].Trim(), directory = value[(eq + 1)..];
            if (name.Length == 0) throw new UsageException($"--lora {value}: the name is empty");
            if (modules.Any(m => m.Name == name)) throw new UsageException($"--lora {value}: the name '{name}' is given twice; each adapter needs its own name");
            if (name == servedName)
                throw new UsageException($"--lora {value}: '{name}' is the served model's own name (--served-model-name, or the model directory's name); name the adapter otherwise");
            modules.Add(new LoraModule(name, directory));
        }
        bool loading = slots?.RuntimeLoading == true;
        if (modules.Count == 0 && !loading)
        {
            if (slots?.MaxLoras is not null || slots?.MaxLoraRank is not null)
                throw new UsageException("--max-loras and --max-lora-rank size the slots of served LoRA adapters: give --lora NAME=DIR or --enable-lora-loading");
            return modules;
        }
        string what = modules.Count > 0 ? "--lora" : "--enable-lora-loading";
        if (draftModel is not null)
            throw new UsageException($"{what} with --draft-model: the draft model guesses for the base alone, so it is not supported with served adapters; drop --draft-model (--draft-tokens N guesses by prompt lookup and works with --lora)");
        if (adapter is not null)
            throw new UsageException($"{what} with --adapter {adapter}: serve that adapter as one more --lora NAME=DIR, or export the merged base first (tessera export --adapter) and serve adapters over it");
        foreach (var m in modules)
        {
            if (!Directory.Exists(m.Directory)) throw new UsageException($"--lora {m.Name}={m.Directory}: not a directory (give a PEFT adapter directory: adapter_config.json and adapter_model.safetensors)");
            try
            {
                TrainedModel.CheckAdapter(model, m.Directory);
            }
            catch (Exception e) when (e is InvalidDataException or FileNotFoundException or NotSupportedException)
            {
                throw new UsageException($"--lora {m.Name}={m.Directory} does not apply to --model {model}: {e.Message}");
            }
        }
        if (slots?.MaxLoras is int max && max < modules.Count)
            throw new UsageException($"--max-loras {max}: {modules.Count} adapters are given with --lora; give at least {modules.Count}");
        if (slots?.MaxLoraRank is int rank)
            foreach (var m in modules)
                if (TrainedModel.CheckAdapter(model, m.Directory) is var merge && ServedLoraAdapters.RankOf(merge) > rank)
                    throw new UsageException($"--max-lora-rank {rank}: --lora {m.Name}={m.Directory} has rank {ServedLoraAdapters.RankOf(merge)}; give at least that");
        return modules;
    }
}
