namespace Tessera.Tensors;

/// <summary>
/// An RMSNorm applied to the input of a product: x / sqrt(mean(x^2) + <see cref="Epsilon"/>) * scale over the last dimension,
/// the norm in front of every product of a Llama block, with scale = <see cref="Weight"/>, or 1 + <see cref="Weight"/> rounded
/// to the weight's dtype when <see cref="UnitOffset"/> (Gemma's norms). Ops that take one may fuse it into the product (the
/// CUDA backend does when decoding, normalizing x while it stages it).
/// </summary>
/// <param name="Weight">(C) the norm's weight, on the op's backend.</param>
/// <param name="Epsilon">Added to the mean square; positive.</param>
/// <param name="UnitOffset">The weight is applied as 1 + w (Gemma: the stored weight is the scale's offset from one).</param>
public readonly record struct RmsNormPrologue(Tensor Weight, double Epsilon, bool UnitOffset = false);
