namespace Tessera.Tensors;

/// <summary>
/// Group-wise 4-bit weights (<see cref="QuantizedWeight.Int4"/>): per output row, groups of <c>groupSize</c> consecutive input
/// columns share an F32 scale and an integer zero point z in 0 .. 15, and each weight is an unsigned nibble q with
/// w = scale (q - z). Eight nibbles a 32-bit word, column 8w + j of a row in bits 4j .. 4j + 3 of its word w.
/// <para>The round-to-nearest quantizer (<see cref="QuantizeRows"/>, what <c>--quantize int4</c> does as a weight loads) is
/// asymmetric, GPTQ's RTN form with the range stretched to hold 0: lo = min(0, min w), hi = max(0, max w) over the group,
/// scale = (hi - lo) / 15 and z = round(-lo / scale) in F32, q = clamp(round(w / scale) + z, 0, 15), rounding half to even; so a
/// weight is recovered within half a step, |w - scale (q - z)| &lt;= scale / 2 (when z is not clamped), and 0 exactly. A group of
/// zeros gets scale 0, z 0 and zero nibbles.</para>
/// </summary>
public static class Int4Quantization
{
    /// <summary>Nibbles a 32-bit word.</summary>
    public const int PerWord = 8;

    /// <summary>The largest nibble.</summary>
    public const int Levels = 15;

    /// <summary>The group size <c>--quantize int4</c> takes: 128 columns, the GPTQ and AWQ checkpoints' usual one.</summary>
    public const int DefaultGroupSize = 128;

    /// <summary>Groups of a row of <paramref name="columns"/>: ceil(columns / groupSize).</summary>
    public static int Groups(int columns, int groupSize) => groupSize <= 0 ? 1 : (columns + groupSize - 1) / groupSize;

    /// <summary>The nibble of column <paramref name="column"/> of a row whose packed words are <paramref name="row"/>.</summary>
    public static int Nibble(ReadOnlySpan<int> row, int column) => (row[column / PerWord] >> (4 * (column % PerWord))) & 0xF;

    /// <summary>
    /// Quantizes <paramref name="weight"/> (<paramref name="rows"/>, <paramref name="columns"/>, row-major) into
    /// <paramref name="packed"/> (rows, columns / 8), <paramref name="scales"/> and <paramref name="zeros"/> (rows, groups), as
    /// the type says. Throws on a weight that is not finite, naming <paramref name="name"/>, the row and the column.
    /// </summary>
    public static void QuantizeRows(ReadOnlySpan<float> weight, int rows, int columns, int groupSize, Span<int> packed,
        Span<float> scales, Span<sbyte> zeros, string name = "weight")
    {
        if (columns % PerWord != 0 || groupSize <= 0 || groupSize % PerWord != 0)
            throw new ArgumentException($"{name}: int4 quantization needs K ({columns}) and the group size ({groupSize}) to be multiples of {PerWord}");
        int groups = Groups(columns, groupSize);
        long n = (long)rows * columns;
        if (weight.Length != n || packed.Length != n / PerWord || scales.Length != (long)rows * groups || zeros.Length != (long)rows * groups)
            throw new ArgumentException($"{name}: int4 quantization of ({rows}, {columns}) in groups of {groupSize} needs {n} weights, " +
                $"{n / PerWord} words and {(long)rows * groups} scales and zeros, got {weight.Length}, {packed.Length}, {scales.Length} and {zeros.Length}");
        packed.Clear();
        for (int r = 0; r < rows; r++)
            for (int g = 0; g < groups; g++)
            {
                int start = g * groupSize, length = Math.Min(groupSize, columns - start);
                var group = weight.Slice(r * columns + start, length);
                float lo = 0f, hi = 0f;
                for (int c = 0; c < length; c++)
                {
                    float v = group[c];
                    if (!float.IsFinite(v))
                        throw new ArgumentException($"{name}: weight [{r}, {start + c}] is {v}; a weight that is not finite cannot be quantized " +
                            "(the model was saved from a run that diverged, or the file is damaged)");
                    lo = Math.Min(lo, v);
                    hi = Math.Max(hi, v);
                }
                float scale = (hi - lo) / Levels;
                int zero = scale == 0f ? 0 : Math.Clamp((int)MathF.Round(-lo / scale, MidpointRounding.ToEven), 0, Levels);
                scales[r * groups + g] = scale;
                zeros[r * groups + g] = (sbyte)zero;
                if (scale == 0f) continue;
                for (int c = 0; c < length; c++)
                {
                    int q = Math.Clamp((int)MathF.Round(group[c] / scale, MidpointRounding.ToEven) + zero, 0, Levels);
                    long column = (long)r * columns + start + c;
                    packed[(int)(column / PerWord)] |= q << (int)(4 * (column % PerWord));
                }
            }
    }

    /// <summary>
    /// Quantizes <paramref name="weight"/> (<paramref name="rows"/>, <paramref name="columns"/>) on the host into a new int4
    /// <see cref="QuantizedWeight"/> on <paramref name="backend"/>.
    /// </summary>
    public static QuantizedWeight Quantize(IBackend backend, ReadOnlySpan<float> weight, int rows, int columns, int groupSize = DefaultGroupSize,
        string name = "weight")
    {
        ArgumentNullException.ThrowIfNull(backend);
        int groups = Groups(columns, groupSize);
        var target = QuantizedWeight.Int4(backend.Allocate(new Shape(rows, columns / PerWord), DType.I32),
            backend.Allocate(new Shape(rows, groups), DType.F32), backend.Allocate(new Shape(rows, groups), DType.I8), columns, groupSize);
        QuantizeInto(backend, weight, target, name);
        return target;
    }

    /// <summary>Quantizes <paramref name="weight"/> (of <paramref name="target"/>'s shape) on the host into <paramref name="target"/>'s tensors.</summary>
    public static void QuantizeInto(IBackend backend, ReadOnlySpan<float> weight, QuantizedWeight target, string name = "weight")
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(target);
        if (!target.IsInt4)
            throw new ArgumentException($"{name}: int4 quantization writes packed nibbles, the target holds {target.Values.DType} values", nameof(target));
        var packed = new int[target.Values.NumElements];
        var scales = new float[target.Scales.NumElements];
        var zeros = new sbyte[target.Zeros!.NumElements];
        QuantizeRows(weight, target.Rows, target.Columns, target.GroupSize, packed, scales, zeros, name);
        Write(backend, target, packed, scales, zeros);
    }

    /// <summary>Copies host <paramref name="packed"/> words, <paramref name="scales"/> and <paramref name="zeros"/> (in <paramref name="target"/>'s layout) into it.</summary>
    public static void Write(IBackend backend, QuantizedWeight target, int[] packed, float[] scales, sbyte[] zeros)
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(target);
        if (!target.IsInt4 || packed.Length != target.Values.NumElements || scales.Length != target.Scales.NumElements || zeros.Length != target.Zeros!.NumElements)
            throw new ArgumentException($"int4 weight {target.Shape}: {packed.Length} words, {scales.Length} scales and {zeros.Length} zeros do not fit it");
        foreach (var z in zeros)
            if ((uint)z > Levels) throw new ArgumentException($"int4 weight {target.Shape}: zero point {z} is outside 0 .. {Levels}");
        backend.CopyFromHost<int>(packed, target.Values);
        backend.CopyFromHost<float>(scales, target.Scales);
        backend.CopyFromHost<sbyte>(zeros, target.Zeros!);
    }

    /// <summary>
    /// The weight <paramref name="packed"/>, <paramref name="scales"/> and <paramref name="zeros"/> stand for, row-major, in F64:
    /// scale (q - z), exact (an F32 scale times an integer of at most 5 bits).
    /// </summary>
    public static double[] Dequantize(ReadOnlySpan<int> packed, ReadOnlySpan<float> scales, ReadOnlySpan<sbyte> zeros, int rows, int columns, int groupSize)
    {
        int groups = Groups(columns, groupSize), words = columns / PerWord;
        var w = new double[(long)rows * columns];
        for (int r = 0; r < rows; r++)
        {
            var row = packed.Slice(r * words, words);
            for (int c = 0; c < columns; c++)
            {
                int g = r * groups + c / groupSize;
                w[(long)r * columns + c] = (double)scales[g] * (Nibble(row, c) - zeros[g]);
            }
        }
        return w;
    }
}
