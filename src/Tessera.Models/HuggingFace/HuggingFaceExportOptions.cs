using Tessera.Models.Tokenization;
using Tessera.Tensors;

namespace Tessera.Models.HuggingFace;

/// <summary>What <see cref="HuggingFaceExport"/> writes beside the weights, and how it lays the weights out.</summary>
public sealed record HuggingFaceExportOptions
{
    /// <summary>Weight dtype (F32, BF16 or F16), or null (the default) for the model's: BF16 and F16 models as themselves,
    /// F32 and F64 ones as F32.</summary>
    public DType? DType { get; init; }

    /// <summary>Largest safetensors shard (bytes); above it the weights are split into model-0000k-of-0000n.safetensors
    /// with model.safetensors.index.json, as transformers' save_pretrained does. Default 5 GB (5,000,000,000).</summary>
    public long MaxShardBytes { get; init; } = 5_000_000_000;

    /// <summary>A directory whose tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json,
    /// tokenizer.model, vocab.json, merges.txt, *.tiktoken, chat_template.jinja) are copied, or null. Default null.</summary>
    public string? TokenizerDirectory { get; init; }

    /// <summary>The tokenizer, to check that it fits the vocabulary, and (for Tessera's byte tokenizer, which has no
    /// files) to write an equivalent tokenizer.json. Default null.</summary>
    public ITokenizer? Tokenizer { get; init; }

    /// <summary>Special token ids for generation_config.json and config.json; null (the default) takes the tokenizer
    /// directory's (generation_config.json / config.json), or none.</summary>
    public GenerationDefaults? Generation { get; init; }

    /// <summary>Whether an existing non-empty target directory may be replaced. Default false: refused, nothing written.</summary>
    public bool Overwrite { get; init; }
}
