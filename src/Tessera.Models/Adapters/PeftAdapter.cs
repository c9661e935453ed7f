using Tessera.Models.Safetensors;
using Tessera.Nn.Adapters;
using Tessera.Tensors;

namespace Tessera.Models.Adapters;

/// <summary>
/// LoRA adapters in Hugging Face PEFT's layout, which peft's <c>PeftModel.from_pretrained</c> loads: a directory with
/// adapter_config.json (<see cref="PeftAdapterConfig"/>) and adapter_model.safetensors holding, per adapted module,
/// "base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight" (r, in) and "...lora_B.weight" (out, r) in F32 (GPT-2:
/// "base_model.model.transformer.h.N.attn.c_attn.lora_A.weight", fan_in_fan_out true; Mixtral's experts:
/// "base_model.model.model.layers.N.block_sparse_moe.experts.J.w1.lora_A.weight", one adapter per expert). A module that spans
/// two Tessera layers (Phi-3's mlp.gate_up_proj over gate and up) is one A, the layers' shared one, and one B whose rows are the
/// layers' B in order.
/// </summary>
public static class PeftAdapter
{
    /// <summary>The weights file.</summary>
    public const string WeightsFile = "adapter_model.safetensors";

    /// <summary>
    /// Writes <paramref name="adapters"/> (their F32 masters under mixed precision) to <paramref name="directory"/>: into a hidden
    /// sibling first, renamed over any existing directory last, so a reader never sees half an adapter.
    /// </summary>
    public static void Save(string directory, LoraAdapters adapters, string? baseModel)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentNullException.ThrowIfNull(adapters);
        if (adapters.Layout.Parameters.FirstOrDefault(p => p.Shape != p.GlobalShape) is { } split)
            throw new InvalidOperationException($"LoRA: {split.Name} is split over tensor-parallel ranks ({split.Shape} of {split.GlobalShape}); " +
                "a rank holds only its share: write the whole adapter from values gathered from the ranks (WriteFiles, as LoraCheckpoint.Save does)");
        string full = Path.GetFullPath(directory).TrimEnd(Path.DirectorySeparatorChar);
        string temporary = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.tmp-{Guid.NewGuid():N}");
        Directory.CreateDirectory(temporary);
        try
        {
            WriteFiles(temporary, adapters, baseModel, adapters.Read);
            if (Directory.Exists(full)) Directory.Delete(full, recursive: true);
            Directory.Move(temporary, full);
        }
        catch
        {
            try { Directory.Delete(temporary, recursive: true); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>
    /// Writes adapter_config.json and adapter_model.safetensors of <paramref name="adapters"/> into the existing directory
    /// <paramref name="directory"/>, each adapter's values read by <paramref name="read"/> (F64, written as F32): the adapters'
    /// own <see cref="LoraAdapters.Read"/> on one device, or the global tensors gathered from the ranks of a sharded or
    /// tensor-parallel run: the tensors are written in their global shapes, the file one device writes.
    /// </summary>
    public static void WriteFiles(string directory, LoraAdapters adapters, string? baseModel, Func<Nn.Parameter, double[]> read)
    {
        ArgumentNullException.ThrowIfNull(adapters);
        ArgumentNullException.ThrowIfNull(read);
        var writer = new SafetensorsWriter();
        writer.Metadata["format"] = "pt";
        foreach (var m in Modules(adapters))
        {
            writer.Add(m.AName, m.A.GlobalShape, Array.ConvertAll(read(m.A), v => (float)v));
            writer.Add(m.BName, m.BShape, m.B.SelectMany(read).Select(v => (float)v).ToArray());   // the layers' B rows in order
        }
        var o = adapters.Options;
        var config = new PeftAdapterConfig(o.Rank, o.Alpha, o.Dropout, o.Targets.Select(LoraTargets.ModuleOf).Distinct().ToList(), baseModel,
            FanInFanOut: o.Targets.Any(LoraTargets.IsConv1D));
        writer.Write(Path.Combine(directory, WeightsFile));
        File.WriteAllText(Path.Combine(directory, PeftAdapterConfig.FileName), config.ToJson() + "\n");
    }

    /// <summary>
    /// The LoRA options of the adapter in <paramref name="directory"/> for a model of <paramref name="config"/> (its rank, alpha,
    /// dropout and targets; <paramref name="seed"/> for dropout), to build the model with before <see cref="Load"/>.
    /// </summary>
    public static LoraOptions ReadOptions(string directory, TransformerConfig config, int seed = 0)
    {
        var c = PeftAdapterConfig.Read(Path.Combine(directory, PeftAdapterConfig.FileName));
        IReadOnlyList<LoraTarget> targets;
        try
        {
            targets = LoraTargets.Parse(config, c.TargetModules, peftModules: true);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{Path.Combine(directory, PeftAdapterConfig.FileName)}: target_modules: {e.Message}", e);
        }
        return new LoraOptions { Rank = c.Rank, Alpha = c.Alpha, Dropout = c.Dropout, Seed = seed, Targets = targets }.Validate();
    }

    /// <summary>
    /// Loads the adapter weights in <paramref name="directory"/> into <paramref name="adapters"/> (built with
    /// <see cref="ReadOptions"/>' options, or the same rank and targets). Every expected tensor must be present with its shape and
    /// no other: checked before anything is written.
    /// </summary>
    public static void Load(string directory, LoraAdapters adapters)
    {
        ArgumentNullException.ThrowIfNull(adapters);
        var config = PeftAdapterConfig.Read(Path.Combine(directory, PeftAdapterConfig.FileName));
        if (config.Rank != adapters.Options.Rank)
            throw new InvalidDataException($"{directory}: the adapter has r = {config.Rank} but the model's adapters r = {adapters.Options.Rank}");
        string path = Path.Combine(directory, WeightsFile);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: missing (a PEFT adapter directory holds adapter_config.json and {WeightsFile})", path);
        using var file = SafetensorsFile.Open(path);
        var expected = new List<(string Name, Shape Shape, IReadOnlyList<Nn.Parameter> Parameters)>();
        foreach (var m in Modules(adapters))
        {
            expected.Add((m.AName, m.A.GlobalShape, [m.A]));
            expected.Add((m.BName, m.BShape, m.B));
        }
        foreach (var (name, shape, p) in expected)
        {
            string what = string.Join(" + ", p.Select(x => x.Name));
            if (!file.Contains(name)) throw new InvalidDataException($"{path}: tensor '{name}' is missing (the model's adapters need it for {what})");
            var info = file[name];
            if (info.Shape != shape) throw new InvalidDataException($"{path}: tensor '{name}' is {info.Shape}; the model's adapter {what} is {shape}");
        }
        var extra = file.Tensors.Select(t => t.Name).Except(expected.Select(e => e.Name), StringComparer.Ordinal).ToList();
        if (extra.Count > 0)
            throw new InvalidDataException($"{path}: {extra.Count} tensor(s) the model's adapters do not have, e.g. '{extra[0]}' (its target_modules or layers differ from the model's)");
        foreach (var (name, _, parameters) in expected)
        {
            var values = file.ReadAsDouble(name);
            long offset = 0;
            foreach (var p in parameters)                            // a fused module's B: each layer's rows in order
            {
                long count = p.GlobalShape.NumElements;
                adapters.Write(p, p.LocalValues(values.AsSpan((int)offset, (int)count).ToArray()));   // a tensor-parallel rank's share
                offset += count;
            }
        }
    }

    /// <summary>
    /// One PEFT module's adapter: its tensor names, its A and the B of each Tessera layer it spans, in row order (one, or the gate's
    /// and the up's for Phi-3's gate_up_proj, which share the A).
    /// </summary>
    private sealed record Module(string AName, string BName, Nn.Parameter A, IReadOnlyList<Nn.Parameter> B)
    {
        public Shape BShape => new(B.Sum(b => b.GlobalShape[0]), A.GlobalShape[0]);
    }

    /// <summary>The adapters grouped by PEFT module name (parts of layers the checkpoint fuses share one name and one A), in layer order.</summary>
    private static List<Module> Modules(LoraAdapters adapters)
    {
        var modules = new List<Module>();
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var (part, block) in Parts(adapters))
        {
            string a = LoraTargets.PeftName(part, block, isA: true);
            if (index.TryGetValue(a, out int i))
            {
                if (!ReferenceEquals(modules[i].A, part.A))
                    throw new InvalidOperationException($"LoRA: {modules[i].A.Name} and {part.A.Name} are both PEFT's '{a}'; only layers sharing one A fuse into one module");
                modules[i] = modules[i] with { B = [.. modules[i].B, part.B] };
            }
            else
            {
                index[a] = modules.Count;
                modules.Add(new Module(a, LoraTargets.PeftName(part, block, isA: false), part.A, [part.B]));
            }
        }
        return modules;
    }

    /// <summary>Every adapter with its layer's name ("blocks.3.attn.qkv", "blocks.3.mlp.experts.5.gate"), which must be in a block.</summary>
    private static IEnumerable<(LoraPart Part, string Layer)> Parts(LoraAdapters adapters)
    {
        foreach (var layer in adapters.Layers)
        {
            var segments = layer.Name.Split('.');
            if (segments.Length < 2 || segments[0] != "blocks" || !int.TryParse(segments[1], out _))
                throw new InvalidOperationException($"LoRA: layer '{layer.Name}' is not in a block; PEFT names exist for block layers only");
            foreach (var part in layer.Parts) yield return (part, layer.Name);
        }
    }
}
