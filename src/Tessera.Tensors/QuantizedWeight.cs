namespace Tessera.Tensors;

/// <summary>
/// An nn.Linear weight (N, K) stored a byte a weight with one F32 scale per output row (symmetric, per channel): the weight it
/// stands for is <c>Scales[n] * Values[n, k]</c>, the values either signed 8-bit integers (<see cref="DType.I8"/>, weight-only
/// int8: the products multiply x by them in x's precision) or E4M3 codes (<see cref="DType.F8E4M3"/>, W8A8-FP8: the products
/// quantize each row of x to E4M3 as well and multiply codes by codes). Products read it through
/// <see cref="IBackend.QuantizedMatMul"/>; <see cref="IBackend.Dequantize"/> gives the floating-point weight back.
/// <see cref="Int8Quantization.QuantizeRows"/> and <see cref="Fp8Quantization.QuantizeRows"/> make one from a floating-point weight.
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
    }

    /// <summary>(N, K) I8 or F8E4M3.</summary>
    public Tensor Values { get; }

    /// <summary>True when the values are E4M3 codes (the products quantize x too), false for int8.</summary>
    public bool IsFp8 => Values.DType == DType.F8E4M3;

    /// <summary>(N) F32: row n of the weight is Scales[n] times row n of <see cref="Values"/>.</summary>
    public Tensor Scales { get; }

    /// <summary>Output features N.</summary>
    public int Rows => Values.Size(0);

    /// <summary>Input features K.</summary>
    public int Columns => Values.Size(1);

    /// <summary>The shape of the weight it stands for, (N, K).</summary>
    public Shape Shape => Values.Shape;

    /// <summary>Bytes held: one a value (int8 or E4M3), four a scale.</summary>
    public long Bytes => Values.NumElements + 4L * Rows;

    /// <summary>
    /// The checks every backend applies to <see cref="IBackend.QuantizedMatMul"/>: x (M, K) and y (M, N) of one floating-point
    /// dtype with this weight (N, K) between them, on the backend that holds it; bias (N) of that dtype; epilogue None or
    /// Gelu; a norm's weight (K) of x's dtype; then <see cref="MatMulEpilogueArguments.Validate"/>'s checks of beta, auxiliary and addend.
    /// </summary>
    public void ValidateProduct(string backend, Tensor x, Tensor y, double beta, Tensor? bias, MatMulEpilogue epilogue,
        Tensor? auxiliary, Tensor? addend, RmsNormPrologue? norm = null)
    {
        ArgumentNullException.ThrowIfNull(x); ArgumentNullException.ThrowIfNull(y);
        string where = $"{backend}.QuantizedMatMul";
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
