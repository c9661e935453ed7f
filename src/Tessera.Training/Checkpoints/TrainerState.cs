using System.Text.Json.Serialization;
using Tessera.Models;

namespace Tessera.Training.Checkpoints;

/// <summary>trainer_state.json: everything besides tensors that a resume needs to continue bit for bit.</summary>
public sealed record TrainerState
{
    /// <summary>Completed optimizer updates.</summary>
    [JsonPropertyName("step")] public int Step { get; init; }

    /// <summary>AdamW's bias-correction step count.</summary>
    [JsonPropertyName("optimizer_step")] public long OptimizerStep { get; init; }

    /// <summary>Training data position: shard index.</summary>
    [JsonPropertyName("data_shard")] public int DataShard { get; init; }

    /// <summary>Training data position: token offset.</summary>
    [JsonPropertyName("data_offset")] public long DataOffset { get; init; }

    /// <summary>Training data position: completed passes over the data.</summary>
    [JsonPropertyName("data_epoch")] public int DataEpoch { get; init; }

    /// <summary>Seed of the run (weight initialization; the data order is sequential).</summary>
    [JsonPropertyName("seed")] public int Seed { get; init; }

    /// <summary>Element type of the master weights and optimizer state ("F32" or "F64").</summary>
    [JsonPropertyName("dtype")] public string DType { get; init; } = "F32";

    /// <summary>The model's configuration in Tessera's own terms.</summary>
    [JsonPropertyName("model")] public TransformerConfig Model { get; init; } = new();

    /// <summary>Training settings of the run.</summary>
    [JsonPropertyName("options")] public TrainerOptions Options { get; init; } = new();

    /// <summary>Tokenizer used to make the data: "byte" or a Hugging Face directory.</summary>
    [JsonPropertyName("tokenizer")] public string Tokenizer { get; init; } = "byte";

    /// <summary>A LoRA run's adapters (the weights trained are theirs, the model a frozen base); null for full training.</summary>
    [JsonPropertyName("lora")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public LoraState? Lora { get; init; }
}
