namespace Tessera.Nn.Quantization;

/// <summary>How an inference model keeps the weights of its linear layers.</summary>
public enum WeightQuantization
{
    /// <summary>In the model's dtype, as trained.</summary>
    None,

    /// <summary>
    /// Signed 8-bit integers with one F32 scale per output row (<see cref="Tessera.Tensors.QuantizedWeight"/>): a byte a weight
    /// instead of two (BF16) or four (F32); norms and biases stay in the model's dtype.
    /// </summary>
    Int8,

    /// <summary>
    /// OCP FP8 E4M3 codes with one F32 scale per output row (W8A8-FP8, vLLM's dynamic form): a byte a weight, and the products
    /// quantize each row of their input to E4M3 as they run (<see cref="Tessera.Tensors.Fp8Quantization"/>), so that tensor
    /// cores of compute capability 8.9 and above multiply codes by codes. Norms and biases stay in the model's dtype.
    /// </summary>
    Fp8,

    /// <summary>
    /// Group-wise 4-bit integers (<see cref="Tessera.Tensors.Int4Quantization"/>, GPTQ's and AWQ's weights): per output row, groups
    /// of consecutive input columns (128 by default) with an F32 scale and a zero point each, eight nibbles a 32-bit word. Only
    /// the linear layers' weights (not the embedding tables nor the LM head, which the GPTQ and AWQ checkpoints keep in 16 bits);
    /// the products dequantize them as they go, in x's precision.
    /// </summary>
    Int4,
}
