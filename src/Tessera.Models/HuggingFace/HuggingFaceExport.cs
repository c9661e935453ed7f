using System.Text.Json;
using System.Text.Json.Nodes;
using Tessera.Models.Safetensors;
using Tessera.Models.Tokenization;
using Tessera.Nn;
using Tessera.Tensors;

namespace Tessera.Models.HuggingFace;

/// <summary>
/// Writes a complete Hugging Face model directory that transformers' from_pretrained loads and generates from: config.json
/// (the model_type of the family, RoPE scaling, special token ids), generation_config.json, the tokenizer files, and the
/// weights in the model's dtype as safetensors, sharded with model.safetensors.index.json above
/// <see cref="HuggingFaceExportOptions.MaxShardBytes"/>. Everything is checked first and written into a temporary sibling
/// directory that is renamed into place last, so bad input or a failure leaves nothing behind. Weights are read one
/// parameter at a time (a shard's worth is held at most).
/// </summary>
public static class HuggingFaceExport
{
    /// <summary>Tokenizer files copied from <see cref="HuggingFaceExportOptions.TokenizerDirectory"/> when present.</summary>
    public static IReadOnlyList<string> TokenizerFiles { get; } =
        ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja"];

    /// <summary>Exports <paramref name="model"/> (its F32 masters under mixed precision) to <paramref name="directory"/>.</summary>
    /// <exception cref="ArgumentException">The options are inconsistent (dtype, shard size, tokenizer that does not fit).</exception>
    /// <exception cref="IOException">The target exists and is not empty (without Overwrite).</exception>
    public static void Write(string directory, Transformer model, HuggingFaceExportOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        var byName = model.Parameters.Parameters.ToDictionary(p => p.Name, StringComparer.Ordinal);
        var defaultType = model.DType is Tessera.Tensors.DType.BF16 or Tessera.Tensors.DType.F16 ? model.DType : Tessera.Tensors.DType.F32;
        Write(directory, model.Config, name => Read(byName, name, model.Parameters.Backend), defaultType, options ?? new HuggingFaceExportOptions());
    }

    /// <summary>Exports canonical host tensors (F32) of <paramref name="config"/> to <paramref name="directory"/> (see the other overload).</summary>
    public static void Write(string directory, TransformerConfig config, IReadOnlyDictionary<string, HostTensor> canonical, HuggingFaceExportOptions? options = null) =>
        Write(directory, config, name => canonical.TryGetValue(name, out var t) ? t : throw new ArgumentException($"parameter '{name}' is missing"),
            Tessera.Tensors.DType.F32, options ?? new HuggingFaceExportOptions());

    private static HostTensor Read(Dictionary<string, Parameter> byName, string name, IBackend backend) =>
        byName.TryGetValue(name, out var p) ? new HostTensor(p.Shape, p.ReadMasterOrValue(w => HuggingFaceModelDirectory.CopyFromParameter(w, backend)))
            : throw new ArgumentException($"parameter '{name}' is missing from the model");

    private static void Write(string directory, TransformerConfig config, Func<string, HostTensor> canonical, DType defaultType, HuggingFaceExportOptions options)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        var map = HuggingFaceWeightMap.For(config);
        var dtype = options.DType ?? defaultType;
        if (dtype is not (Tessera.Tensors.DType.F32 or Tessera.Tensors.DType.BF16 or Tessera.Tensors.DType.F16))
            throw new ArgumentException($"HuggingFaceExportOptions.DType: {dtype} is not a weight dtype transformers loads here (F32, BF16, F16)");
        if (options.MaxShardBytes <= 0) throw new ArgumentException($"HuggingFaceExportOptions.MaxShardBytes ({options.MaxShardBytes}) must be positive");
        if (options.TokenizerDirectory is { } tokDir && !Directory.Exists(tokDir))
            throw new ArgumentException($"HuggingFaceExportOptions.TokenizerDirectory: {tokDir} does not exist");
        if (options.Tokenizer is { } tokenizer) TokenizerLoader.CheckFits(tokenizer, config.VocabSize, options.TokenizerDirectory ?? "the tokenizer");
        var generation = options.Generation ?? (options.TokenizerDirectory is { } gd ? GenerationDefaults.Load(gd) : new GenerationDefaults());
        foreach (int id in generation.EosTokenIds.Concat(generation.BosTokenId is int b ? [b] : []))
            if (id >= config.VocabSize) throw new ArgumentException($"special token id {id} is outside the vocabulary of {config.VocabSize}");
        string full = Path.GetFullPath(directory);
        if (Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any() && !options.Overwrite)
            throw new IOException($"{full}: exists and is not empty; choose another directory (or set Overwrite)");

        string temporary = Path.Combine(Path.GetDirectoryName(full.TrimEnd(Path.DirectorySeparatorChar))!, $".{Path.GetFileName(full.TrimEnd(Path.DirectorySeparatorChar))}.tmp-{Guid.NewGuid():N}");
        Directory.CreateDirectory(temporary);
        try
        {
            WriteWeights(temporary, map, canonical, dtype, options.MaxShardBytes);
            string torchDtype = dtype switch { Tessera.Tensors.DType.BF16 => "bfloat16", Tessera.Tensors.DType.F16 => "float16", _ => "float32" };
            File.WriteAllText(Path.Combine(temporary, HuggingFaceModelDirectory.ConfigFile), HuggingFaceConfig.ToJson(config, torchDtype, generation) + "\n");
            if (generation.BosTokenId is not null || generation.EosTokenIds.Count > 0 || generation.PadTokenId is not null)
                File.WriteAllText(Path.Combine(temporary, GenerationDefaults.FileName), generation.ToJson() + "\n");
            WriteTokenizer(temporary, options, config);
            if (Directory.Exists(full)) Directory.Delete(full, recursive: true);
            Directory.Move(temporary, full);
        }
        catch
        {
            try { Directory.Delete(temporary, recursive: true); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>Plans shards in map order (a new shard when the next tensor would pass the limit) and writes each.</summary>
    private static void WriteWeights(string directory, HuggingFaceWeightMap map, Func<string, HostTensor> canonical, DType dtype, long maxShardBytes)
    {
        int size = dtype.SizeInBytes();
        var shardOf = new Dictionary<string, int>(StringComparer.Ordinal);
        var shardBytes = new List<long> { 0 };
        foreach (var e in map.Entries)
            foreach (var (name, shape) in e.Sources)
            {
                if (shardOf.ContainsKey(name)) continue;   // a tensor several parameters share (Phi-3's gate_up_proj) counts once
                long bytes = shape.NumElements * size;
                if (shardBytes[^1] > 0 && shardBytes[^1] + bytes > maxShardBytes) shardBytes.Add(0);
                shardBytes[^1] += bytes;
                shardOf[name] = shardBytes.Count - 1;
            }
        int shards = shardBytes.Count;
        string FileName(int s) => shards == 1 ? SafetensorsShardSource.SingleFile : $"model-{s + 1:D5}-of-{shards:D5}.safetensors";
        for (int s = 0; s < shards; s++)
        {
            var writer = new SafetensorsWriter();
            writer.Metadata["format"] = "pt";
            foreach (var (name, t) in map.ToHuggingFace(map.Entries.Where(e => e.Sources.Any(src => shardOf[src.Name] == s)), canonical))
                if (shardOf[name] == s) Add(writer, name, dtype, t.Shape, t.Data);
            writer.Write(Path.Combine(directory, FileName(s)));
        }
        if (shards > 1)
        {
            var weightMap = new JsonObject();
            foreach (var (name, s) in shardOf.OrderBy(kv => kv.Key, StringComparer.Ordinal)) weightMap[name] = FileName(s);
            var index = new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = shardBytes.Sum() }, ["weight_map"] = weightMap };
            File.WriteAllText(Path.Combine(directory, SafetensorsShardSource.IndexFile), index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        }
    }

    /// <summary>Adds F32 values to the writer in <paramref name="dtype"/> (rounded to nearest even for BF16 and F16).</summary>
    private static void Add(SafetensorsWriter writer, string name, DType dtype, Shape shape, float[] data)
    {
        switch (dtype)
        {
            case Tessera.Tensors.DType.F32: writer.Add(name, shape, data); break;
            case Tessera.Tensors.DType.BF16: writer.Add(name, dtype, shape, Array.ConvertAll(data, BFloat16.FromSingle)); break;
            case Tessera.Tensors.DType.F16: writer.Add(name, dtype, shape, Array.ConvertAll(data, x => (Half)x)); break;
            default: throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a weight dtype");
        }
    }

    private static void WriteTokenizer(string directory, HuggingFaceExportOptions options, TransformerConfig config)
    {
        if (options.TokenizerDirectory is { } source)
        {
            foreach (var f in TokenizerFiles.Select(n => Path.Combine(source, n)).Concat(Directory.GetFiles(source, "*.tiktoken")))
                if (File.Exists(f)) File.Copy(f, Path.Combine(directory, Path.GetFileName(f)));
            return;
        }
        if (options.Tokenizer is ByteTokenizer or HuggingFaceTokenizer { Inner: ByteTokenizer })
        {
            // Tessera's byte tokenizer as a byte-level BPE without merges: token i is byte i, as ByteTokenizer encodes.
            var vocab = new JsonObject();
            for (int b = 0; b < 256; b++) vocab[((char)ByteLevelAlphabet.ByteToChar[b]).ToString()] = b;
            var tokenizerJson = new JsonObject
            {
                ["version"] = "1.0",
                ["added_tokens"] = new JsonArray(),
                ["normalizer"] = null,
                ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true },
                ["post_processor"] = null,
                ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true },
                ["model"] = new JsonObject
                {
                    ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = null, ["end_of_word_suffix"] = null,
                    ["fuse_unk"] = false, ["byte_fallback"] = false, ["ignore_merges"] = false, ["vocab"] = vocab, ["merges"] = new JsonArray(),
                },
            };
            File.WriteAllText(Path.Combine(directory, "tokenizer.json"), tokenizerJson.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
            var tokenizerConfig = new JsonObject { ["tokenizer_class"] = "PreTrainedTokenizerFast", ["model_max_length"] = config.MaxSequenceLength };
            File.WriteAllText(Path.Combine(directory, "tokenizer_config.json"), tokenizerConfig.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        }
    }
}
