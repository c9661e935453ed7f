namespace Tessera.Tensors;

/// <summary>Element type of a tensor's storage.</summary>
public enum DType
{
    /// <summary>IEEE 754 binary32.</summary>
    F32,
    /// <summary>IEEE 754 binary64; used for gradient checks and golden comparisons.</summary>
    F64,
    /// <summary>bfloat16: the upper 16 bits of an F32.</summary>
    BF16,
    /// <summary>IEEE 754 binary16.</summary>
    F16,
    /// <summary>Signed 32-bit integer (token ids, targets).</summary>
    I32,
    /// <summary>Unsigned 16-bit integer (llm.c token shards).</summary>
    U16,
    /// <summary>Signed 8-bit integer (weight-only quantization).</summary>
    I8,
}
