using System.Text.Json.Serialization;

namespace Tessera.Models;

/// <summary>The architectural family, which fixes the layer choices below by default.</summary>
[JsonConverter(typeof(JsonStringEnumConverter))]
public enum ModelFamily
{
    /// <summary>Learned positions, LayerNorm with bias, GELU MLP, biases everywhere, tied LM head.</summary>
    Gpt2,
    /// <summary>RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, no biases, untied head (by default).</summary>
    Llama,
}
