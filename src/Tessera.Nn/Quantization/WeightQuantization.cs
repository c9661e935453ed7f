namespace Tessera.Nn.Quantization;

/// <summary>How an inference model keeps the weights of its linear layers.</summary>
public enum WeightQuantization
{
    /// <summary>In the model's dtype, as trained.</summary>
    None,

    /// <summary>
    /// Signed 8-bit integers with one F32 scale per output row (<see cref="Tessera.Tensors.QuantizedWeight"/>): a byte a weight
    /// instead of two (BF16) or four (F32); embeddings and norms stay in the model's dtype.
    /// </summary>
    Int8,
}
