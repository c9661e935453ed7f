using Tessera.Tensors;

namespace Tessera.Nn.Quantization;

/// <summary>
/// An inference model's parameters with the weights of its linear layers quantized to int8 (<see cref="WeightQuantization.Int8"/>),
/// FP8 E4M3 (<see cref="WeightQuantization.Fp8"/>) or group-wise int4 (<see cref="WeightQuantization.Int4"/>): the chosen weights
/// live as <see cref="QuantizedWeight"/>s (one I8 or F8E4M3 buffer, one F32 buffer of row scales; for int4 one I32 buffer of
/// packed nibbles, one F32 buffer of group scales and one I8 buffer of zero points), every other
/// parameter (embeddings, norms, biases) in one value buffer of the model's dtype. No gradients and no masters: it is frozen.
/// <para>A linear layer finds its weight through <see cref="Parameter.Quantized"/> and runs <see cref="IBackend.QuantizedMatMul"/>;
/// <see cref="Parameter.Value"/> of a quantized weight throws, naming it, so no code reads a weight that is not there.
/// Loaders write through <see cref="Parameter.WriteMasterOrValue"/> as into an arena: the weight arrives in a transient F32
/// tensor and is quantized on the host (<see cref="Int8Quantization.QuantizeRows"/>, <see cref="Fp8Quantization.QuantizeRows"/>); readers of the authoritative value
/// (<see cref="Parameter.ReadMasterOrValue{T}"/>: finite checks, export) get the dequantized weight in F32.</para>
/// </summary>
public sealed class QuantizedParameterStorage : IParameterStorage, IDisposable
{
    private readonly Tensor?[] _values;
    private readonly QuantizedWeight?[] _quantized;
    private readonly Tensor? _valueBuffer, _quantizedBuffer, _scaleBuffer, _zeroBuffer;
    private bool _disposed;
    // The input orders given (SetQuantizedInputOrder), one backend pair for each distinct order.
    private readonly List<(int[] Host, Tensor Order, Tensor Inverse)> _orders = [];

    /// <summary>
    /// Allocates, on <paramref name="backend"/>, the parameters of <paramref name="layout"/>: those <paramref name="quantize"/>
    /// picks (each must be a rank-2 weight (N, K)) as int8 (or, with <paramref name="format"/> <see cref="WeightQuantization.Fp8"/>,
    /// E4M3) with row scales, or (<see cref="WeightQuantization.Int4"/>) as group-wise int4 with groups of
    /// <paramref name="int4GroupSize"/> columns (-1: one group a row, per channel; K must be a multiple of 8), the rest in
    /// <paramref name="dtype"/>; all zero. Attaches itself to the layout.
    /// </summary>
    public QuantizedParameterStorage(ParameterLayout layout, IBackend backend, DType dtype, Func<Parameter, bool> quantize,
        WeightQuantization format = WeightQuantization.Int8, int int4GroupSize = Int4Quantization.DefaultGroupSize)
    {
        ArgumentNullException.ThrowIfNull(layout);
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(quantize);
        if (dtype is not (DType.F32 or DType.F64 or DType.BF16 or DType.F16))
            throw new ArgumentException($"quantized parameters: the other parameters' dtype must be floating point, got {dtype}", nameof(dtype));
        if (format is not (WeightQuantization.Int8 or WeightQuantization.Fp8 or WeightQuantization.Int4))
            throw new ArgumentException($"quantized parameters: the format must be Int8, Fp8 or Int4, got {format}", nameof(format));
        if (format == WeightQuantization.Int4 && int4GroupSize != -1 && (int4GroupSize <= 0 || int4GroupSize % Int4Quantization.PerWord != 0))
            throw new ArgumentException($"quantized parameters: the int4 group size must be -1 (per channel) or a positive multiple of {Int4Quantization.PerWord}, got {int4GroupSize}", nameof(int4GroupSize));
        Format = format;
        Layout = layout;
        Backend = backend;
        DType = dtype;
        var ps = layout.Parameters;
        _values = new Tensor?[ps.Count];
        _quantized = new QuantizedWeight?[ps.Count];
        var picked = new bool[ps.Count];
        bool int4 = format == WeightQuantization.Int4;
        // Int4: the packed words (N, K / 8), and the scales and zeros (N, groups), a group the whole row for -1.
        int GroupOf(Parameter p) => int4GroupSize == -1 ? p.Shape[1] : int4GroupSize;
        Shape ValuesOf(Parameter p) => int4 ? new Shape(p.Shape[0], p.Shape[1] / Int4Quantization.PerWord) : p.Shape;
        Shape ScalesOf(Parameter p) => int4 ? new Shape(p.Shape[0], Int4Quantization.Groups(p.Shape[1], GroupOf(p))) : new Shape(p.Shape[0]);
        long valueLength = 0, quantizedLength = 0, rows = 0;
        foreach (var p in ps)
        {
            picked[p.Index] = quantize(p);
            if (picked[p.Index] && p.Shape.Rank != 2)
                throw new ArgumentException($"quantized parameters: '{p.Name}' {p.Shape} is not a (N, K) weight; only linear layers' weights are quantized");
            if (picked[p.Index] && int4 && p.Shape[1] % Int4Quantization.PerWord != 0)
                throw new ArgumentException($"quantized parameters: '{p.Name}' {p.Shape} has K = {p.Shape[1]} input features, not a multiple of " +
                    $"{Int4Quantization.PerWord}; int4 packs eight a word (leave the model unquantized or use --quantize int8)");
            if (picked[p.Index]) { quantizedLength += Aligned(ValuesOf(p).NumElements); rows += Aligned(ScalesOf(p).NumElements); }
            else valueLength += Aligned(p.NumElements);
        }
        if (valueLength > 0) _valueBuffer = backend.Zeros(BufferShape(valueLength), dtype);
        if (quantizedLength > 0)
        {
            _quantizedBuffer = backend.Zeros(BufferShape(quantizedLength), format switch
            {
                WeightQuantization.Fp8 => DType.F8E4M3,
                WeightQuantization.Int4 => DType.I32,
                _ => DType.I8,
            });
            _scaleBuffer = backend.Zeros(BufferShape(rows), DType.F32);
            if (int4) _zeroBuffer = backend.Zeros(BufferShape(rows), DType.I8);
        }
        long valueOffset = 0, quantizedOffset = 0, rowOffset = 0;
        foreach (var p in ps)
        {
            if (picked[p.Index])
            {
                var values = _quantizedBuffer!.Narrow(quantizedOffset, ValuesOf(p));
                var scales = _scaleBuffer!.Narrow(rowOffset, ScalesOf(p));
                _quantized[p.Index] = int4
                    ? QuantizedWeight.Int4(values, scales, _zeroBuffer!.Narrow(rowOffset, ScalesOf(p)), p.Shape[1], GroupOf(p))
                    : new QuantizedWeight(values, scales);
                quantizedOffset += Aligned(ValuesOf(p).NumElements);
                rowOffset += Aligned(ScalesOf(p).NumElements);
            }
            else
            {
                _values[p.Index] = _valueBuffer!.Narrow(valueOffset, p.Shape);
                valueOffset += Aligned(p.NumElements);
            }
        }
        QuantizedCount = picked.Count(x => x);
        layout.Attach(this);
    }

    /// <summary>Offsets in every buffer are multiples of this many elements (64 bytes of int8, 256 of F32).</summary>
    private const int Alignment = ParameterLayout.Alignment;

    private static long Aligned(long n) => (n + Alignment - 1) / Alignment * Alignment;

    // (rows, Alignment), so that buffers past 2^31 elements (Llama 8B's int8 weights) keep int dimensions.
    private static Shape BufferShape(long length) => new(checked((int)Math.Max(length / Alignment, 1)), Alignment);

    /// <summary>The layout the buffers follow.</summary>
    public ParameterLayout Layout { get; }

    /// <inheritdoc/>
    public IBackend Backend { get; }

    /// <summary>The dtype of the parameters that are not quantized (and of the products' activations).</summary>
    public DType DType { get; }

    /// <summary>How the quantized weights are held: <see cref="WeightQuantization.Int8"/>, <see cref="WeightQuantization.Fp8"/> or <see cref="WeightQuantization.Int4"/>.</summary>
    public WeightQuantization Format { get; }

    /// <summary>How many parameters are held quantized.</summary>
    public int QuantizedCount { get; }

    /// <summary>Bytes of the buffers held on the backend: the values, the quantized weights, their scales and zeros, and the input orders.</summary>
    public long AllocatedBytes => _disposed ? 0 : (_valueBuffer?.Storage.ByteLength ?? 0) + (_quantizedBuffer?.Storage.ByteLength ?? 0)
        + (_scaleBuffer?.Storage.ByteLength ?? 0) + (_zeroBuffer?.Storage.ByteLength ?? 0)
        + _orders.Sum(o => o.Order.Storage.ByteLength + o.Inverse.Storage.ByteLength);

    /// <inheritdoc/>
    public QuantizedWeight? Quantized(Parameter parameter) => Live()._quantized[Check(parameter).Index];

    /// <inheritdoc/>
    /// <remarks>The order and its inverse live on the backend as (K) I32 tensors; weights given the same order share one pair (a
    /// GPTQ checkpoint's q, k and v, or gate and up, are ordered by one input's statistics, so the fused QKV stack and the MLP pair
    /// gather x once each).</remarks>
    public void SetQuantizedInputOrder(Parameter parameter, int[]? order)
    {
        int index = Check(parameter).Index;
        var q = Live()._quantized[index] ?? throw new InvalidOperationException(
            $"parameter '{parameter.Name}' is not held quantized, so its weight has no stored column order to set");
        if (order is null) { _quantized[index] = q.WithoutInputOrder(); return; }
        if (order.Length != q.Columns)
            throw new ArgumentException($"parameter '{parameter.Name}': an input order of {order.Length} entries for a weight of {q.Columns} inputs", nameof(order));
        var inverse = QuantizedWeight.CheckPermutation(order, $"parameter '{parameter.Name}'");
        var shared = _orders.FirstOrDefault(o => o.Host.AsSpan().SequenceEqual(order));
        if (shared.Host is null)
        {
            var device = Backend.Allocate(new Shape(order.Length), DType.I32);
            var deviceInverse = Backend.Allocate(new Shape(order.Length), DType.I32);
            Backend.CopyFromHost<int>(order, device);
            Backend.CopyFromHost<int>(inverse, deviceInverse);
            shared = ((int[])order.Clone(), device, deviceInverse);
            _orders.Add(shared);
        }
        _quantized[index] = q.WithoutInputOrder().WithInputOrder(shared.Order, shared.Inverse);
    }

    /// <inheritdoc/>
    public Tensor Value(Parameter parameter) => Live()._values[Check(parameter).Index] ?? throw new InvalidOperationException(
        $"parameter '{parameter.Name}' is held as {Format.ToString().ToLowerInvariant()} with scales (quantized weights); read Parameter.Quantized, or " +
        "Parameter.ReadMasterOrValue for the dequantized weight");

    /// <inheritdoc/>
    public Tensor Grad(Parameter parameter) => throw new InvalidOperationException(
        $"parameter '{parameter.Name}' belongs to a quantized inference model, which has no gradients; train a model that is not quantized");

    /// <inheritdoc/>
    public Tensor? Master(Parameter parameter) => null;

    /// <inheritdoc/>
    public Tensor Authoritative(Parameter parameter) => Value(parameter);

    /// <inheritdoc/>
    /// <remarks>A quantized weight is dequantized into a transient F32 tensor for the call.</remarks>
    public T ReadAuthoritative<T>(Parameter parameter, Func<Tensor, T> read)
    {
        ArgumentNullException.ThrowIfNull(read);
        if (Quantized(parameter) is not { } q) return read(Value(parameter));
        var w = Backend.Zeros(parameter.Shape, DType.F32);
        try
        {
            Backend.Dequantize(q, w);
            return read(w);
        }
        finally { w.Storage.Dispose(); }
    }

    /// <inheritdoc/>
    /// <remarks>A quantized weight is written into a transient F32 tensor, read to the host and quantized there
    /// (<see cref="Int8Quantization.QuantizeRows"/> or <see cref="Fp8Quantization.QuantizeRows"/>, which refuse weights that are
    /// not finite, naming the parameter).</remarks>
    public void WriteAuthoritative(Parameter parameter, Action<Tensor> write)
    {
        ArgumentNullException.ThrowIfNull(write);
        if (Quantized(parameter) is not { } q) { write(Value(parameter)); return; }
        var w = Backend.Zeros(parameter.Shape, DType.F32);
        float[] host;
        try
        {
            write(w);
            host = Backend.ToArray<float>(w);
        }
        finally { w.Storage.Dispose(); }
        // A weight written whole is quantized in the inputs' order: an act-order layout no longer applies.
        if (q.InputOrder is not null) SetQuantizedInputOrder(parameter, null);
        q = _quantized[parameter.Index]!;
        if (q.IsInt4) Int4Quantization.QuantizeInto(Backend, host, q, parameter.Name);
        else if (q.IsFp8) Fp8Quantization.QuantizeInto(Backend, host, q, parameter.Name);
        else Int8Quantization.QuantizeInto(Backend, host, q, parameter.Name);
    }

    /// <inheritdoc/>
    public bool IsResident(Parameter parameter) => !_disposed;

    /// <inheritdoc/>
    public bool HasGradient(Parameter parameter) => false;

    /// <inheritdoc/>
    public bool RequiresGradient(Parameter parameter) => false;

    /// <summary>Frees the buffers.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _valueBuffer?.Storage.Dispose();
        _quantizedBuffer?.Storage.Dispose();
        _scaleBuffer?.Storage.Dispose();
        _zeroBuffer?.Storage.Dispose();
        foreach (var (_, order, inverse) in _orders)
        {
            order.Storage.Dispose();
            inverse.Storage.Dispose();
        }
    }

    private QuantizedParameterStorage Live() => _disposed
        ? throw new ObjectDisposedException(nameof(QuantizedParameterStorage), "the quantized model's parameters were freed")
        : this;

    private Parameter Check(Parameter parameter)
    {
        ArgumentNullException.ThrowIfNull(parameter);
        if (parameter.Index >= _values.Length || !ReferenceEquals(Layout.Parameters[parameter.Index], parameter))
            throw new ArgumentException($"parameter '{parameter.Name}' is not one of this storage's layout");
        return parameter;
    }
}
