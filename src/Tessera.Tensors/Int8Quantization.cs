namespace Tessera.Tensors;

/// <summary>
/// Symmetric per-row int8 quantization of an nn.Linear weight on the host (LLM.int8's and TensorRT-LLM's weight-only form):
/// row n's scale is max|w[n, ·]| / 127 and each value round(w / scale), so every weight is recovered within half a step,
/// |w - scale q| &lt;= scale / 2 = max|w[n, ·]| / 254, and a row's largest weight exactly. A row of zeros has scale 0.
/// </summary>
public static class Int8Quantization
{
    /// <summary>The largest magnitude of a quantized value.</summary>
    public const int Levels = 127;

    /// <summary>
    /// Quantizes <paramref name="weight"/> (<paramref name="rows"/>, <paramref name="columns"/>, row-major) into
    /// <paramref name="values"/> (same layout) and <paramref name="scales"/> (<paramref name="rows"/>). Throws on a weight that
    /// is not finite, naming <paramref name="name"/>, the row and the column: its scale would be too.
    /// </summary>
    public static void QuantizeRows(ReadOnlySpan<float> weight, int rows, int columns, Span<sbyte> values, Span<float> scales, string name = "weight")
    {
        long n = (long)rows * columns;
        if (rows < 0 || columns < 0 || weight.Length != n || values.Length != n || scales.Length != rows)
            throw new ArgumentException($"{name}: int8 quantization of ({rows}, {columns}) needs {n} weights and values and {rows} scales, " +
                $"got {weight.Length}, {values.Length} and {scales.Length}");
        for (int r = 0; r < rows; r++)
        {
            var row = weight.Slice(r * columns, columns);
            var q = values.Slice(r * columns, columns);
            for (int c = 0; c < columns; c++)
                if (!float.IsFinite(row[c]))
                    throw new ArgumentException($"{name}: weight [{r}, {c}] is {row[c]}; a weight that is not finite cannot be quantized " +
                        "(the model was saved from a run that diverged, or the file is damaged)");
            scales[r] = QuantizeRow(row, q);
        }
    }

    /// <summary>
    /// Quantizes one row into <paramref name="values"/> (of its length) and returns its scale, max|row| / 127: each value is
    /// round(x · 127 / max|row|) to nearest even, clamped to [-127, 127]; a row of zeros gets scale 0 and zeros. A row with a
    /// value that is not finite gets a NaN scale and zeros, so that what it stands for is NaN, as a floating-point copy would
    /// be (callers that must refuse such rows check first, as <see cref="QuantizeRows"/> does). The CUDA kernels that
    /// quantize (the int8 paged KV cache's append) compute the same F32 operations.
    /// </summary>
    public static float QuantizeRow(ReadOnlySpan<float> row, Span<sbyte> values)
    {
        if (values.Length != row.Length)
            throw new ArgumentException($"int8 quantization of a row of {row.Length} values needs as many outputs, got {values.Length}", nameof(values));
        float max = 0f;
        bool finite = true;
        foreach (float v in row)
        {
            finite &= float.IsFinite(v);
            max = Math.Max(max, Math.Abs(v));
        }
        if (!finite) { values.Clear(); return float.NaN; }
        float scale = max / Levels;
        if (scale == 0f) { values.Clear(); return 0f; }
        float inverse = Levels / max;
        for (int c = 0; c < row.Length; c++)
            values[c] = (sbyte)Math.Clamp(MathF.Round(row[c] * inverse, MidpointRounding.ToEven), -Levels, Levels);
        return scale;
    }

    /// <summary>
    /// Quantizes <paramref name="weight"/> (<paramref name="rows"/>, <paramref name="columns"/>) on the host into a new
    /// <see cref="QuantizedWeight"/> on <paramref name="backend"/>.
    /// </summary>
    public static QuantizedWeight Quantize(IBackend backend, ReadOnlySpan<float> weight, int rows, int columns, string name = "weight")
    {
        ArgumentNullException.ThrowIfNull(backend);
        var target = new QuantizedWeight(backend.Allocate(new Shape(rows, columns), DType.I8), backend.Allocate(new Shape(rows), DType.F32));
        QuantizeInto(backend, weight, target, name);
        return target;
    }

    /// <summary>Quantizes <paramref name="weight"/> (of <paramref name="target"/>'s shape) on the host into <paramref name="target"/>'s tensors on <paramref name="backend"/>.</summary>
    public static void QuantizeInto(IBackend backend, ReadOnlySpan<float> weight, QuantizedWeight target, string name = "weight")
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(target);
        if (target.Values.DType != DType.I8)
            throw new ArgumentException($"{name}: int8 quantization writes I8 values, the target holds {target.Values.DType}", nameof(target));
        var values = new sbyte[target.Values.NumElements];
        var scales = new float[target.Rows];
        QuantizeRows(weight, target.Rows, target.Columns, values, scales, name);
        backend.CopyFromHost<sbyte>(values, target.Values);
        backend.CopyFromHost<float>(scales, target.Scales);
    }

    /// <summary>The weight <paramref name="values"/> and <paramref name="scales"/> stand for, row-major, in F32.</summary>
    public static float[] Dequantize(ReadOnlySpan<sbyte> values, ReadOnlySpan<float> scales, int columns)
    {
        var w = new float[values.Length];
        for (int i = 0; i < w.Length; i++) w[i] = scales[i / columns] * values[i];
        return w;
    }
}
