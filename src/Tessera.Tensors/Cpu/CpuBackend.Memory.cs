using Tessera.Tensors.Cpu.Kernels;

namespace Tessera.Tensors.Cpu;

// Allocation-free memory ops: host transfers, copies with casts between any layouts, fills.
public sealed unsafe partial class CpuBackend
{
    /// <inheritdoc/>
    public void CopyFromHost<T>(ReadOnlySpan<T> source, Tensor destination) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(destination);
        CheckHostType<T>(nameof(CopyFromHost), destination);
        if (source.Length != destination.NumElements)
            throw new ArgumentException($"{nameof(CopyFromHost)}: source has {source.Length} elements but destination {destination.Shape} has {destination.NumElements}", nameof(source));
        byte* dst = BytePtr(destination);
        Ptr<byte>(destination); // ownership check
        fixed (T* src = source)
        {
            byte* s = (byte*)src;
            var hostStrides = destination.Shape.ContiguousStrides();
            int size = sizeof(T);
            DType type = destination.DType;
            StridedLoop.ForEachRow(destination.Shape.ToArray(), hostStrides, destination.Strides,
                (so, dOff, n, sst, dst2) => ElementCast.Run(type, s + so * size, sst, type, dst + dOff * size, dst2, n));
        }
        KeepOperandsAlive(destination);
    }

    /// <inheritdoc/>
    public void CopyToHost<T>(Tensor source, Span<T> destination) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(source);
        CheckHostType<T>(nameof(CopyToHost), source);
        if (destination.Length != source.NumElements)
            throw new ArgumentException($"{nameof(CopyToHost)}: destination has {destination.Length} elements but source {source.Shape} has {source.NumElements}", nameof(destination));
        byte* src = BytePtr(source);
        Ptr<byte>(source);
        fixed (T* dstHost = destination)
        {
            byte* d = (byte*)dstHost;
            var hostStrides = source.Shape.ContiguousStrides();
            int size = sizeof(T);
            DType type = source.DType;
            StridedLoop.ForEachRow(source.Shape.ToArray(), source.Strides, hostStrides,
                (so, dOff, n, sst, dst2) => ElementCast.Run(type, src + so * size, sst, type, d + dOff * size, dst2, n));
        }
        KeepOperandsAlive(source);
    }

    private static void CheckHostType<T>(string op, Tensor tensor) where T : unmanaged
    {
        DType hostType;
        try { hostType = DTypeInfo.Of<T>(); }
        catch (NotSupportedException)
        {
            throw new ArgumentException($"{op}: host element type {typeof(T).Name} stores no DType; tensor {tensor.Shape} is {tensor.DType}");
        }
        if (hostType != tensor.DType)
            throw new ArgumentException($"{op}: host element type {typeof(T).Name} ({hostType}) does not match tensor {tensor.Shape} of dtype {tensor.DType}; use a {tensor.DType} span or Copy to a {hostType} tensor first");
    }

    /// <inheritdoc/>
    public void Copy(Tensor source, Tensor destination)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(destination);
        RequireSameShape(nameof(Copy), nameof(destination), destination, nameof(source), source);
        Ptr<byte>(source); Ptr<byte>(destination);
        byte* s = BytePtr(source), d = BytePtr(destination);
        DType st = source.DType, dt = destination.DType;
        int ss = st.SizeInBytes(), ds = dt.SizeInBytes();
        if (source.IsContiguous && destination.IsContiguous)
        {
            long n = source.NumElements;
            ParallelChunks(n, st == dt ? 1 : 4, (a, b) => ElementCast.Run(st, s + a * ss, 1, dt, d + a * ds, 1, b - a));
        }
        else
        {
            StridedLoop.ForEachRow(source.Shape.ToArray(), source.Strides, destination.Strides,
                (so, dOff, n, sst, dst2) => ElementCast.Run(st, s + so * ss, sst, dt, d + dOff * ds, dst2, n));
        }
        KeepOperandsAlive(source, destination);
    }

    /// <inheritdoc/>
    public void Fill(Tensor tensor, double value)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        Ptr<byte>(tensor);
        byte* p = BytePtr(tensor);
        DType type = tensor.DType;
        int size = type.SizeInBytes();
        // One element holds the cast value; fill copies its bytes.
        long bits = 0;
        ElementCast.Write(type, (byte*)&bits, value);
        long pattern = bits;
        StridedLoop.ForEachRow(tensor.Shape.ToArray(), tensor.Strides, tensor.Strides, (so, _, n, sst, _) =>
        {
            byte* row = p + so * size;
            switch (size)
            {
                case 8: FillRow((long*)row, sst, n, pattern); break;
                case 4: FillRow((int*)row, sst, n, (int)pattern); break;
                case 2: FillRow((short*)row, sst, n, (short)pattern); break;
                default: FillRow(row, sst, n, (byte)pattern); break;
            }
        });
        KeepOperandsAlive(tensor);
    }

    private static void FillRow<T>(T* p, long stride, long n, T value) where T : unmanaged
    {
        if (stride == 1) { new Span<T>(p, (int)Math.Min(n, int.MaxValue)).Fill(value); for (long i = int.MaxValue; i < n; i++) p[i] = value; return; }
        for (long i = 0; i < n; i++) p[i * stride] = value;
    }
}
