using System.CommandLine;

namespace Tessera.Cli.CommandLine;

/// <summary>
/// serve's --max-loras, --max-lora-rank and --enable-lora-loading (vLLM's names): the adapter slots allocated at start-up, and
/// whether clients may load and unload adapters while the server runs (POST /v1/load_lora_adapter, /v1/unload_lora_adapter).
/// </summary>
public sealed class LoraLoadingOptions
{
    /// <summary>--max-loras N.</summary>
    public Option<int?> MaxLoras { get; } = SharedOptions.AtLeast(new Option<int?>("--max-loras")
    {
        Description = "LoRA adapters held at once (slots allocated at start-up; the --lora adapters occupy the first) " +
            "[default: the number of --lora, at least 1 with --enable-lora-loading]",
        HelpName = "N",
    }, 1);

    /// <summary>--max-lora-rank R.</summary>
    public Option<int?> MaxLoraRank { get; } = SharedOptions.AtLeast(new Option<int?>("--max-lora-rank")
    {
        Description = "largest LoRA rank a slot holds (smaller ranks are zero-padded) [default: the largest --lora rank, at least 16 with --enable-lora-loading]",
        HelpName = "R",
    }, 1);

    /// <summary>--enable-lora-loading.</summary>
    public Option<bool> EnableLoading { get; } = SharedOptions.Flag("--enable-lora-loading",
        "serve POST /v1/load_lora_adapter and /v1/unload_lora_adapter (clients make the server read local adapter directories; " +
        "as vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING): every attention and MLP projection is served, so any adapter on those fits");

    /// <summary>The three options, to add to the command.</summary>
    public IEnumerable<Option> All => [MaxLoras, MaxLoraRank, EnableLoading];

    /// <summary>The slots asked for (null when the options leave the model without served adapters).</summary>
    public Tessera.Models.Adapters.LoraSlotOptions Read(ParseResult parse) => new()
    {
        MaxLoras = parse.GetValue(MaxLoras),
        MaxLoraRank = parse.GetValue(MaxLoraRank),
        RuntimeLoading = parse.GetValue(EnableLoading),
    };
}
