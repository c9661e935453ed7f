namespace Tessera.Tensors;

/// <summary>
/// Symmetric per-row FP8 (E4M3) quantization, of an nn.Linear weight on the host and of activations row by row (vLLM's
/// dynamic FP8 form): row n's scale is max|row| / 448 in F32 (a row of zeros gets scale 1), and each code is
/// e4m3(x / scale), the division an IEEE F32 one and the conversion <see cref="Float8E4M3.FromSingle"/>'s (round to nearest
/// even, saturating to ±448). A value is recovered within half an E4M3 step of its magnitude's binade: a relative error of at
/// most 2^-4 above scale 2^-6, an absolute one of scale 2^-10 below.
/// </summary>
public static class Fp8Quantization
{
    /// <summary>
    /// Quantizes one row into <paramref name="codes"/> (of its length) and returns its scale (see the type). A row with a value
    /// that is not finite gets a NaN scale and zero codes, so what it stands for is NaN, as with
    /// <see cref="Int8Quantization.QuantizeRow"/>. The CUDA kernel that quantizes activations (<c>quantize_rows_fp8_*</c>)
    /// computes the same F32 operations.
    /// </summary>
    public static float QuantizeRow(ReadOnlySpan<float> row, Span<byte> codes) => QuantizeOneRow(row, codes, zeroScaleForZeros: false);

    /// <summary>
    /// Quantizes one (position, head) row of a paged KV cache (<see cref="PagedKvPool"/>, an F8E4M3 pool) into
    /// <paramref name="codes"/> and returns its scale: as <see cref="QuantizeRow(ReadOnlySpan{float}, Span{byte})"/> (scale =
    /// max|row| / 448, codes e4m3(x / scale), both F32 operations), except that a row whose scale is 0 (zeros, or magnitudes
    /// below 448 x 2^-149) gets scale 0 and +0 codes, as <see cref="Int8Quantization.QuantizeRow"/> gives it: a pool's zero
    /// scale then means zeros in both one-byte formats, and a row of negative zeros is written as the same bytes as one of
    /// zeros. A row with a value that is not finite gets a NaN scale and zero codes. The CUDA append
    /// (<c>paged_append_f8_*</c>) computes the same F32 operations.
    /// </summary>
    public static float QuantizeKvRow(ReadOnlySpan<float> row, Span<byte> codes) => QuantizeOneRow(row, codes, zeroScaleForZeros: true);

    private static float QuantizeOneRow(ReadOnlySpan<float> row, Span<byte> codes, bool zeroScaleForZeros)
    {
        if (codes.Length != row.Length)
            throw new ArgumentException($"fp8 quantization of a row of {row.Length} values needs as many outputs, got {codes.Length}", nameof(codes));
        float max = 0f;
        bool finite = true;
        foreach (float v in row)
        {
            finite &= float.IsFinite(v);
            max = Math.Max(max, Math.Abs(v));
        }
        if (!finite) { codes.Clear(); return float.NaN; }
        float scale = max / Float8E4M3.MaxValue;
        if (scale == 0f)
        {
            if (zeroScaleForZeros) { codes.Clear(); return 0f; }
            scale = 1f;                    // zeros (or magnitudes so small that the scale underflows) stay zeros
        }
        for (int c = 0; c < row.Length; c++) codes[c] = Float8E4M3.FromSingle(row[c] / scale);
        return scale;
    }

    /// <summary>
    /// Quantizes <paramref name="weight"/> (<paramref name="rows"/>, <paramref name="columns"/>, row-major) into
    /// <paramref name="codes"/> (same layout) and <paramref name="scales"/> (<paramref name="rows"/>). Throws on a weight that is
    /// not finite, naming <paramref name="name"/>, the row and the column.
    /// </summary>
    public static void QuantizeRows(ReadOnlySpan<float> weight, int rows, int columns, Span<byte> codes, Span<float> scales, string name = "weight")
    {
        long n = (long)rows * columns;
        if (rows < 0 || columns < 0 || weight.Length != n || codes.Length != n || scales.Length != rows)
            throw new ArgumentException($"{name}: fp8 quantization of ({rows}, {columns}) needs {n} weights and codes and {rows} scales, " +
                $"got {weight.Length}, {codes.Length} and {scales.Length}");
        for (int r = 0; r < rows; r++)
        {
            var row = weight.Slice(r * columns, columns);
            for (int c = 0; c < columns; c++)
                if (!float.IsFinite(row[c]))
                    throw new ArgumentException($"{name}: weight [{r}, {c}] is {row[c]}; a weight that is not finite cannot be quantized " +
                        "(the model was saved from a run that diverged, or the file is damaged)");
            scales[r] = QuantizeRow(row, codes.Slice(r * columns, columns));
        }
    }

    /// <summary>
    /// Quantizes <paramref name="weight"/> (<paramref name="rows"/>, <paramref name="columns"/>) on the host into a new
    /// <see cref="QuantizedWeight"/> of F8E4M3 values on <paramref name="backend"/>.
    /// </summary>
    public static QuantizedWeight Quantize(IBackend backend, ReadOnlySpan<float> weight, int rows, int columns, string name = "weight")
    {
        ArgumentNullException.ThrowIfNull(backend);
        var target = new QuantizedWeight(backend.Allocate(new Shape(rows, columns), DType.F8E4M3), backend.Allocate(new Shape(rows), DType.F32));
        QuantizeInto(backend, weight, target, name);
        return target;
    }

    /// <summary>Quantizes <paramref name="weight"/> (of <paramref name="target"/>'s shape, F8E4M3 values) on the host into <paramref name="target"/>'s tensors.</summary>
    public static void QuantizeInto(IBackend backend, ReadOnlySpan<float> weight, QuantizedWeight target, string name = "weight")
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(target);
        if (target.Values.DType != DType.F8E4M3)
            throw new ArgumentException($"{name}: fp8 quantization writes F8E4M3 values, the target holds {target.Values.DType}", nameof(target));
        var codes = new byte[target.Values.NumElements];
        var scales = new float[target.Rows];
        QuantizeRows(weight, target.Rows, target.Columns, codes, scales, name);
        backend.CopyFromHost<byte>(codes, target.Values);
        backend.CopyFromHost<float>(scales, target.Scales);
    }

    /// <summary>The weight <paramref name="codes"/> and <paramref name="scales"/> stand for, row-major, in F64 (exact).</summary>
    public static double[] Dequantize(ReadOnlySpan<byte> codes, ReadOnlySpan<float> scales, int columns)
    {
        var w = new double[codes.Length];
        for (int i = 0; i < w.Length; i++) w[i] = (double)scales[i / columns] * Float8E4M3.ToSingle(codes[i]);
        return w;
    }
}
