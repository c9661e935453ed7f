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
    /// <summary>
    /// OCP FP8 E4M3 ("e4m3fn"): sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities, NaN 0x7F/0xFF, largest finite
    /// 448, smallest subnormal 2^-9 (<see cref="Float8E4M3"/>). A storage format of FP8 weights and quantized activations;
    /// no op computes in it.
    /// </summary>
    F8E4M3,
}
