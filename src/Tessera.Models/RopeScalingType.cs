using System.Text.Json.Serialization;

namespace Tessera.Models;

/// <summary>transformers' rope_type values Tessera implements (default RoPE is a null <see cref="RopeScaling"/>).</summary>
[JsonConverter(typeof(JsonStringEnumConverter))]
public enum RopeScalingType
{
    /// <summary>"linear": every frequency divided by the factor (position interpolation).</summary>
    Linear,
    /// <summary>"dynamic": NTK-aware base rescaled per call once the sequence passes max_position_embeddings.</summary>
    Dynamic,
    /// <summary>"llama3": Llama 3.1's banded interpolation.</summary>
    Llama3,
    /// <summary>"yarn": YaRN's ramp between interpolation and extrapolation, with an attention factor.</summary>
    Yarn,
    /// <summary>"longrope" (also "su"): per-pair short and long factors dividing the frequencies, the long ones once a call
    /// passes the original context (Phi-3-mini-128k, Phi-3.5, Phi-4-mini), with an attention factor.</summary>
    LongRope,
}
