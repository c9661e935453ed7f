namespace Tessera.Tensors;

/// <summary>
/// An nn.Linear weight (N, K) stored a byte a weight with one F32 scale per output row (symmetric, per channel): the weight it
/// stands for is <c>Scales[n] * Values[n, k]</c>, the values either signed 8-bit integers (<see cref="DType.I8"/>, weight-only
/// int8: the products multiply x by them in x's precision) or E4M3 codes (<see cref="DType.F8E4M3"/>, W8A8-FP8: the products
/// quantize each row of x to E4M3 as well and multiply codes by codes). Products read it through
/// <see cref="IBackend.QuantizedMatMul"/>; <see cref="IBackend.Dequantize"/> gives the floating-point weight back.
/// <see cref="Int8Quantization.QuantizeRows"/> and <see cref="Fp8Quantization.QuantizeRows"/> make one from a floating-point weight.
/// <para>The group-wise int4 form (<see cref="Int4"/>, <see cref="IsInt4"/>: GPTQ's and AWQ's weights, <see cref="Int4Quantization"/>):
/// <see cref="Values"/> (N, K / 8) I32, word w of row n holding columns 8w .. 8w + 7 as unsigned nibbles, column 8w + j in bits
/// 4j .. 4j + 3 (little-nibble first, no interleave); <see cref="Scales"/> (N, G) F32 and <see cref="Zeros"/> (N, G) I8 (0 .. 15)
/// for G = ceil(K / <see cref="GroupSize"/>) groups of consecutive columns (the last one may be shorter); the weight is
/// <c>Scales[n, k / GroupSize] * (q[n, k] - Zeros[n, k / GroupSize])</c>. A symmetric checkpoint has every zero 8.</para>
/// <para>An input order (<see cref="InputOrder"/>, GPTQ's activation order, desc_act): the stored columns are the weight's inputs
/// permuted, stored column j holding input <c>InputOrder[j]</c>, so that groups that are scattered over the inputs are contiguous
/// runs of stored columns. The weight it stands for is then <c>W[n, InputOrder[j]] = stored[n, j]</c>, and a product gathers x's
/// columns in that order first (<see cref="IBackend.GatherColumns"/>): y = stored (x[:, InputOrder])^T. Every backend op that
/// takes a quantized weight honours it (the embedding lookups refuse one); <see cref="IBackend.Dequantize"/> gives the weight in the inputs' order.</para>
/// </summary>
public sealed record QuantizedWeight
{
    /// <summary>Pairs <paramref name="values"/> (N, K) I8 or F8E4M3, contiguous, with <paramref name="scales"/> (N) F32 on the same backend.</summary>
    public QuantizedWeight(Tensor values, Tensor scales)
    {
        ArgumentNullException.ThrowIfNull(values);
        ArgumentNullException.ThrowIfNull(scales);
        if (values.DType is not (DType.I8 or DType.F8E4M3) || values.Rank != 2 || !values.IsContiguous)
            throw new ArgumentException($"quantized weight: values must be a contiguous (N, K) I8 or F8E4M3 tensor, got {values.DType} {values.Shape}", nameof(values));
        if (scales.DType != DType.F32 || scales.Rank != 1 || scales.Size(0) != values.Size(0) || !scales.IsContiguous)
            throw new ArgumentException($"quantized weight: scales must be a contiguous ({values.Size(0)}) F32 tensor, one a row of the values {values.Shape}, got {scales.DType} {scales.Shape}", nameof(scales));
        Values = values;
        Scales = scales;
        Columns = values.Size(1);
        GroupSize = Columns;
    }

    private QuantizedWeight(Tensor packed, Tensor scales, Tensor? zeros, int columns, int groupSize, Tensor? inputOrder = null, Tensor? inputOrderInverse = null)
    {
        Values = packed;
        Scales = scales;
        Zeros = zeros;
        Columns = columns;
        GroupSize = groupSize;
        InputOrder = inputOrder;
        InputOrderInverse = inputOrderInverse;
    }

    /// <summary>
    /// A group-wise int4 weight (N, <paramref name="columns"/>) from <paramref name="packed"/> (N, K / 8) I32 (eight nibbles a
    /// word, see the type), <paramref name="scales"/> (N, G) F32 and <paramref name="zeros"/> (N, G) I8, G = ceil(K /
    /// <paramref name="groupSize"/>), all contiguous on one backend. K and the group size must be positive multiples of 8, so
    /// that no word straddles two groups.
    /// </summary>
    public static QuantizedWeight Int4(Tensor packed, Tensor scales, Tensor zeros, int columns, int groupSize)
    {
        ArgumentNullException.ThrowIfNull(packed);
        ArgumentNullException.ThrowIfNull(scales);
        ArgumentNullException.ThrowIfNull(zeros);
        if (columns <= 0 || columns % Int4Quantization.PerWord != 0)
            throw new ArgumentException($"int4 weight: K ({columns}) must be a positive multiple of {Int4Quantization.PerWord} (eight nibbles a word)", nameof(columns));
        if (groupSize <= 0 || groupSize % Int4Quantization.PerWord != 0)
            throw new ArgumentException($"int4 weight: the group size ({groupSize}) must be a positive multiple of {Int4Quantization.PerWord}", nameof(groupSize));
        if (packed.DType != DType.I32 || packed.Rank != 2 || packed.Size(1) != columns / Int4Quantization.PerWord || !packed.IsContiguous)
            throw new ArgumentException($"int4 weight: the packed values must be a contiguous (N, {columns / Int4Quantization.PerWord}) I32 tensor, got {packed.DType} {packed.Shape}", nameof(packed));
        int n = packed.Size(0), groups = Int4Quantization.Groups(columns, groupSize);
        if (scales.DType != DType.F32 || scales.Shape != new Shape(n, groups) || !scales.IsContiguous)
            throw new ArgumentException($"int4 weight: scales must be a contiguous ({n}, {groups}) F32 tensor (a scale a group of {groupSize} columns), got {scales.DType} {scales.Shape}", nameof(scales));
        if (zeros.DType != DType.I8 || zeros.Shape != new Shape(n, groups) || !zeros.IsContiguous)
            throw new ArgumentException($"int4 weight: zeros must be a contiguous ({n}, {groups}) I8 tensor, got {zeros.DType} {zeros.Shape}", nameof(zeros));
        if (!ReferenceEquals(scales.Storage.Backend, packed.Storage.Backend) || !ReferenceEquals(zeros.Storage.Backend, packed.Storage.Backend))
            throw new ArgumentException("int4 weight: the packed values, scales and zeros live on different backends");
        return new QuantizedWeight(packed, scales, zeros, columns, groupSize);
    }

    /// <summary>True for the group-wise int4 form (<see cref="Int4"/>).</summary>
    public bool IsInt4 => Zeros is not null;

    /// <summary>(N, G) I8 zero points of the int4 form (0 .. 15), else null.</summary>
    public Tensor? Zeros { get; }

    /// <summary>Columns a scale covers: the int4 form's group size, K for the per-row forms.</summary>
    public int GroupSize { get; }

    /// <summary>Groups a row: ceil(K / <see cref="GroupSize"/>) (1 for the per-row forms).</summary>
    public int Groups => Int4Quantization.Groups(Columns, GroupSize);

    /// <summary>Rows <paramref name="first"/> .. <paramref name="first"/> + <paramref name="count"/> of this weight (views of its
    /// tensors; the input order, which every row shares, kept).</summary>
    public QuantizedWeight SliceRows(int first, int count) =>
        new(Values.Slice(0, first, count), Scales.Slice(0, first, count), Zeros?.Slice(0, first, count), Columns, GroupSize, InputOrder, InputOrderInverse);

    /// <summary>
    /// (K) I32, or null: stored column j holds input <c>InputOrder[j]</c> of the weight (see the type). Set by
    /// <see cref="WithInputOrder"/>; the products gather x's columns in this order.
    /// </summary>
    public Tensor? InputOrder { get; }

    /// <summary>(K) I32, the inverse of <see cref="InputOrder"/> (input k is stored column <c>InputOrderInverse[k]</c>), or null: what
    /// <see cref="IBackend.Dequantize"/> gathers the stored columns by.</summary>
    public Tensor? InputOrderInverse { get; }

    /// <summary>
    /// This weight with its stored columns standing for the inputs <paramref name="order"/> names (stored column j is input
    /// <c>order[j]</c>): <paramref name="order"/> and its inverse <paramref name="inverse"/>, contiguous (K) I32 tensors on the
    /// weight's backend, whose values the caller has checked to be a permutation of 0 .. K - 1 and its inverse
    /// (<see cref="CheckPermutation"/>); the device's copies are not read back.
    /// </summary>
    public QuantizedWeight WithInputOrder(Tensor order, Tensor inverse)
    {
        ArgumentNullException.ThrowIfNull(order);
        ArgumentNullException.ThrowIfNull(inverse);
        foreach (var (t, name) in new[] { (order, nameof(order)), (inverse, nameof(inverse)) })
        {
            if (t.DType != DType.I32 || t.Shape != new Shape(Columns) || !t.IsContiguous)
                throw new ArgumentException($"quantized weight: an input order must be a contiguous ({Columns}) I32 tensor, got {t.DType} {t.Shape}", name);
            if (!ReferenceEquals(t.Storage.Backend, Values.Storage.Backend))
                throw new ArgumentException("quantized weight: the input order lives on another backend than the values", name);
        }
        return new QuantizedWeight(Values, Scales, Zeros, Columns, GroupSize, order, inverse);
    }

    /// <summary>This weight's stored columns as a weight of their own (no input order): what a product over gathered x reads.</summary>
    public QuantizedWeight WithoutInputOrder() => InputOrder is null ? this : new QuantizedWeight(Values, Scales, Zeros, Columns, GroupSize);

    /// <summary>
    /// The inverse of <paramref name="order"/> (inverse[order[j]] = j), after checking that it is a permutation of 0 .. K - 1 for
    /// K = its length. <paramref name="what"/> names it in the message.
    /// </summary>
    /// <exception cref="ArgumentException">A value is outside 0 .. K - 1 or appears twice.</exception>
    public static int[] CheckPermutation(ReadOnlySpan<int> order, string what)
    {
        var inverse = new int[order.Length];
        Array.Fill(inverse, -1);
        for (int j = 0; j < order.Length; j++)
        {
            int k = order[j];
            if ((uint)k >= (uint)order.Length)
                throw new ArgumentException($"{what}: input order entry {j} is {k}, outside 0 .. {order.Length - 1}");
            if (inverse[k] != -1)
                throw new ArgumentException($"{what}: input order names input {k} twice (entries {inverse[k]} and {j}); it must be a permutation");
            inverse[k] = j;
        }
        return inverse;
    }

    /// <summary>(N, K) I8 or F8E4M3; for the int4 form (N, K / 8) I32 of packed nibbles.</summary>
    public Tensor Values { get; }

    /// <summary>True when the values are E4M3 codes (the products quantize x too), false for int8.</summary>
    public bool IsFp8 => Values.DType == DType.F8E4M3;

    /// <summary>(N) F32: row n of the weight is Scales[n] times row n of <see cref="Values"/>; for the int4 form (N, G), a scale a group.</summary>
    public Tensor Scales { get; }

    /// <summary>Output features N.</summary>
    public int Rows => Values.Size(0);

    /// <summary>Input features K.</summary>
    public int Columns { get; }

    /// <summary>The shape of the weight it stands for, (N, K).</summary>
    public Shape Shape => new(Rows, Columns);

    /// <summary>Bytes held: one a value (int8 or E4M3), four a scale; int4: half a value, four a scale and one a zero point per group;
    /// an input order and its inverse four bytes an input each.</summary>
    public long Bytes => (IsInt4 ? 4L * Values.NumElements + 5L * Scales.NumElements : Values.NumElements + 4L * Rows)
        + (InputOrder is null ? 0 : 8L * Columns);

    /// <summary>
    /// The checks every backend applies to <see cref="IBackend.QuantizedMatMul"/>: x (M, K) and y (M, N) of one floating-point
    /// dtype with this weight (N, K) between them, on the backend that holds it; bias (N) of that dtype; epilogue None or
    /// Gelu; a norm's weight (K) of x's dtype; then <see cref="MatMulEpilogueArguments.Validate"/>'s checks of beta, auxiliary and addend.
    /// </summary>
    public void ValidateProduct(string backend, Tensor x, Tensor y, double beta, Tensor? bias, MatMulEpilogue epilogue,
        Tensor? auxiliary, Tensor? addend, RmsNormPrologue? norm = null) =>
        ValidateProduct($"{backend}.QuantizedMatMul", backend, x, y, beta, bias, epilogue, auxiliary, addend, norm);

    /// <summary>
    /// Checks the arguments of <see cref="IBackend.QuantizedMatMulSwiGlu"/> with this weight as the gate: <paramref name="up"/>
    /// of the gate's shape and format (values' dtype, int4 or not, group size), and each weight's product into
    /// <paramref name="output"/> (N, F) with its bias as <see cref="ValidateProduct(string, Tensor, Tensor, double, Tensor?, MatMulEpilogue, Tensor?, Tensor?, RmsNormPrologue?)"/> checks it.
    /// </summary>
    public void ValidateSwiGlu(string backend, QuantizedWeight up, Tensor x, Tensor output, Tensor? gateBias, Tensor? upBias, RmsNormPrologue? norm)
    {
        ArgumentNullException.ThrowIfNull(up);
        string where = $"{backend}.QuantizedMatMulSwiGlu";
        if (!IsLike(up))
            throw new ArgumentException($"{where}: the gate ({Format}) and up ({up.Format}) weights must have one shape and format", nameof(up));
        ValidateProduct(where, backend, x, output, 0.0, gateBias, MatMulEpilogue.None, null, null, norm);
        up.ValidateProduct(where, backend, x, output, 0.0, upBias, MatMulEpilogue.None, null, null, norm);
    }

    /// <summary>Whether <paramref name="other"/> has this weight's shape and format (values' dtype, int4 or not, group size).</summary>
    public bool IsLike(QuantizedWeight other)
    {
        ArgumentNullException.ThrowIfNull(other);
        return other.Shape == Shape && other.Values.DType == Values.DType && other.IsInt4 == IsInt4 && other.GroupSize == GroupSize;
    }

    /// <summary>Shape and storage, for messages: "(F, C) int4, groups of 128" or "(F, C) I8".</summary>
    private string Format => IsInt4 ? $"{Shape} int4, groups of {GroupSize}" : $"{Shape} {Values.DType}";

    private void ValidateProduct(string where, string backend, Tensor x, Tensor y, double beta, Tensor? bias, MatMulEpilogue epilogue,
        Tensor? auxiliary, Tensor? addend, RmsNormPrologue? norm)
    {
        ArgumentNullException.ThrowIfNull(x); ArgumentNullException.ThrowIfNull(y);
        if (x.Rank != 2 || y.Rank != 2 || x.Size(1) != Columns || y.Size(0) != x.Size(0) || y.Size(1) != Rows)
            throw new ArgumentException($"{where}: x {x.Shape} and y {y.Shape} do not fit the weight {Shape}: x (M, {Columns}), y (M, {Rows})");
        if (x.DType is not (DType.F32 or DType.F64 or DType.BF16 or DType.F16) || y.DType != x.DType)
            throw new ArgumentException($"{where}: x and y must share one floating-point dtype, got {x.DType} and {y.DType}");
        if (!ReferenceEquals(x.Storage.Backend, Values.Storage.Backend) || !ReferenceEquals(Scales.Storage.Backend, Values.Storage.Backend))
            throw new ArgumentException($"{where}: x and the quantized weight live on different backends");
        if (bias is not null && (bias.DType != x.DType || bias.Shape != new Shape(Rows)))
            throw new ArgumentException($"{where}: bias {bias.DType} {bias.Shape} must be ({Rows}) {x.DType}", nameof(bias));
        if (norm is { } r && (r.Weight.DType != x.DType || r.Weight.Shape != new Shape(Columns)))
            throw new ArgumentException($"{where}: the norm's weight {r.Weight.DType} {r.Weight.Shape} must be ({Columns}) {x.DType}", nameof(norm));
        if (epilogue is not (MatMulEpilogue.None or MatMulEpilogue.Gelu))
            throw new ArgumentException($"{where}: an inference product takes the None or Gelu epilogue, not {epilogue}", nameof(epilogue));
        MatMulEpilogueArguments.Validate(backend, x, y, transposeA: false, beta, bias, epilogue, auxiliary, biasGradient: null, addend);
    }
}
