using System.Text.Json.Serialization;

namespace Tessera.Training.Checkpoints;

/// <summary>The LoRA part of a LoRA run's trainer_state.json: what the adapters are and their random state.</summary>
public sealed record LoraState
{
    /// <summary>The rank r.</summary>
    [JsonPropertyName("rank")] public int Rank { get; init; }

    /// <summary>lora_alpha.</summary>
    [JsonPropertyName("alpha")] public double Alpha { get; init; }

    /// <summary>lora_dropout.</summary>
    [JsonPropertyName("dropout")] public double Dropout { get; init; }

    /// <summary>The targets' short names, in order ("q", "v"; GPT-2 "c_attn").</summary>
    [JsonPropertyName("targets")] public IReadOnlyList<string> Targets { get; init; } = [];

    /// <summary>The base model (a Hugging Face directory) the adapters apply to.</summary>
    [JsonPropertyName("base_model")] public string BaseModel { get; init; } = "";

    /// <summary>Data-parallel ranks that trained it (the global batch is split over them).</summary>
    [JsonPropertyName("data_parallel")] public int DataParallel { get; init; } = 1;

    /// <summary>Tensor-parallel ranks that trained it (each held its share of the adapters; the checkpoint holds the whole ones,
    /// so it resumes at any tp). 1 for checkpoints written before this field.</summary>
    [JsonPropertyName("tensor_parallel")] public int TensorParallel { get; init; } = 1;

    /// <summary>How the frozen base held its weight matrices: "none" (the model's dtype, and checkpoints written before this
    /// field), "int8" (<c>--quantize int8</c>) or "fp8" (<c>--quantize fp8</c>); a resume holds the base the same way.</summary>
    [JsonPropertyName("base_quantization")] public string BaseQuantization { get; init; } = "none";

    /// <summary>Dropout masks drawn by each adapted layer so far, in layer order (the dropout's random state).</summary>
    [JsonPropertyName("masks_drawn")] public IReadOnlyList<long> MasksDrawn { get; init; } = [];
}
