using System.Text.Json.Serialization;

namespace Tessera.Training.Parallel;

/// <summary>How one parameter was laid out when saved.</summary>
/// <param name="Shape">Global shape.</param>
/// <param name="Placement">The placement's text form (<see cref="Tessera.Nn.Placement.Parse"/>).</param>
public sealed record SavedPlacement(
    [property: JsonPropertyName("shape")] int[] Shape,
    [property: JsonPropertyName("placement")] string Placement);
