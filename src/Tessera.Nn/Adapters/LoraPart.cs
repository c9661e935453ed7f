namespace Tessera.Nn.Adapters;

/// <summary>
/// One adapter of a <see cref="LoraLinear"/>: rows [<paramref name="RowStart"/>, RowStart + <paramref name="Rows"/>) of the
/// layer's output (all of them, or one part of a fused QKV) receive scaling · x A^T B^T.
/// </summary>
/// <param name="Target">The target that put it there.</param>
/// <param name="RowStart">First output row (feature) it adds to.</param>
/// <param name="Rows">Output rows it adds to.</param>
/// <param name="A">lora_A (r, in): initialized Kaiming-uniform as PEFT does.</param>
/// <param name="B">lora_B (Rows, r): initialized to zero, so the adapted layer starts equal to the base.</param>
public sealed record LoraPart(LoraTarget Target, int RowStart, int Rows, Parameter A, Parameter B);
