namespace Tessera.Models.Adapters;

/// <summary>
/// How many LoRA adapters a served model holds at once and of what rank (vLLM's --max-loras and --max-lora-rank), and whether
/// adapters may be loaded and unloaded while it serves (vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING). The slots are allocated when the
/// model is built; the adapters given at start-up occupy the first.
/// </summary>
public sealed record LoraSlotOptions
{
    /// <summary>The rank slots hold by default when loading is enabled (vLLM's --max-lora-rank default).</summary>
    public const int DefaultMaxRank = 16;

    /// <summary>
    /// Adapter slots; default (null): the number of start-up adapters, at least 1 when <see cref="RuntimeLoading"/> is on
    /// (vLLM's --max-loras default is 1).
    /// </summary>
    public int? MaxLoras { get; init; }

    /// <summary>
    /// The largest rank a slot holds; default (null): the largest start-up adapter's rank, and at least <see cref="DefaultMaxRank"/>
    /// (16) when <see cref="RuntimeLoading"/> is on.
    /// </summary>
    public int? MaxLoraRank { get; init; }

    /// <summary>
    /// Whether adapters may be loaded and unloaded at run time; default false. When on, every LoRA target of the model's family
    /// (attention and MLP projections) is served, so that any adapter on those layers can be loaded.
    /// </summary>
    public bool RuntimeLoading { get; init; }
}
