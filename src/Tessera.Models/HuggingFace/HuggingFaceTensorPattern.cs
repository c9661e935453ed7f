namespace Tessera.Models.HuggingFace;

/// <summary>A Hugging Face tensor name pattern ("{i}" stands for the layer index) and its shape for a configuration.</summary>
/// <param name="Name">Name pattern, e.g. "model.layers.{i}.self_attn.q_proj.weight".</param>
/// <param name="Shape">Shape of the Hugging Face tensor for a configuration.</param>
public sealed record HuggingFaceTensorPattern(string Name, Func<TransformerConfig, int[]> Shape);
