using Tessera.Tensors;

namespace Tessera.Models.HuggingFace;

/// <summary>A <see cref="WeightMapRow"/> expanded for one configuration and one layer: concrete names and shapes.</summary>
/// <param name="Canonical">Tessera parameter name.</param>
/// <param name="Shape">Tessera parameter shape.</param>
/// <param name="Transform">How the sources become the parameter.</param>
/// <param name="Sources">Hugging Face tensor names and shapes.</param>
/// <param name="SourceRowOffset">For <see cref="WeightTransform.RowBlock"/>: the source row the parameter's first row is.</param>
public sealed record WeightMapEntry(
    string Canonical,
    Shape Shape,
    WeightTransform Transform,
    IReadOnlyList<(string Name, Shape Shape)> Sources,
    int SourceRowOffset = 0);
