using Tessera.Tensors;

namespace Tessera.Models;

/// <summary>
/// One layer's attention as its configuration sets it (<see cref="TransformerConfig.LayerAttention"/>): the sliding window
/// (positions per query, 0 for full causal attention), the rotary frequencies (null without RoPE) and the score scale
/// (1/sqrt(head size), or Gemma's 1/sqrt(query_pre_attn_scalar)) and soft cap of the scores (0 for none; Gemma 2's
/// attn_logit_softcapping). Dense models give every layer the same; Gemma's interleaved stacks give local layers a window
/// and, in Gemma 3, their own RoPE base.
/// </summary>
public sealed record LayerAttention(int Window, RopeFrequencies? Rope, double Scale, double SoftCap = 0);
