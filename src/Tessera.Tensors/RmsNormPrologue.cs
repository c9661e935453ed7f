namespace Tessera.Tensors;

/// <summary>
/// An RMSNorm applied to the input of a product: x / sqrt(mean(x^2) + <see cref="Epsilon"/>) * <see cref="Weight"/> over
/// the last dimension, the norm in front of every product of a Llama block. Ops that take one may fuse it into the
/// product (the CUDA backend does when decoding, normalizing x while it stages it).
/// </summary>
/// <param name="Weight">(C) the norm's scale, on the op's backend.</param>
/// <param name="Epsilon">Added to the mean square; positive.</param>
public readonly record struct RmsNormPrologue(Tensor Weight, double Epsilon);
