namespace Tessera.Models.HuggingFace;

/// <summary>
/// One row of a family's name map: a Tessera parameter pattern, its shape, the Hugging Face tensor(s) it is
/// made of, and the transform between them. "{i}" in names stands for the layer index.
/// </summary>
/// <param name="Canonical">Tessera parameter name pattern, e.g. "blocks.{i}.attn.qkv.weight".</param>
/// <param name="Shape">Tessera shape for a configuration (Linear weights (out, in)).</param>
/// <param name="Transform">How the sources become the parameter.</param>
/// <param name="Sources">Hugging Face tensors, in concatenation order for <see cref="WeightTransform.ConcatRows"/>.</param>
/// <param name="UntiedOnly">Present only when the LM head is not tied to the token embedding.</param>
/// <param name="SourceRowOffset">For <see cref="WeightTransform.RowBlock"/>: the first row of the source the parameter starts at.</param>
public sealed record WeightMapRow(
    string Canonical,
    Func<TransformerConfig, int[]> Shape,
    WeightTransform Transform,
    IReadOnlyList<HuggingFaceTensorPattern> Sources,
    bool UntiedOnly = false,
    Func<TransformerConfig, int>? SourceRowOffset = null)
{
    /// <summary>Whether the pattern repeats per transformer block.</summary>
    public bool PerLayer => Canonical.Contains("{i}", StringComparison.Ordinal);
}
