using System.Numerics;
using System.Runtime.CompilerServices;

namespace Tessera.Tensors.Cpu;

// Argument checks and the thread-splitting helper shared by every op family.
public sealed unsafe partial class CpuBackend
{
    /// <summary>Below this many scalar operations an op runs on the calling thread: a Parallel.For costs microseconds.</summary>
    private const long MinWorkPerThread = 1 << 15;

    /// <summary>
    /// Ends every public op. Kernels read operands through raw pointers into <see cref="CpuStorage"/>, which the JIT does not
    /// count as uses of the tensors: once an op has taken its pointers, a tensor the caller already dropped (a temporary,
    /// <c>Copy(FromHost(...), d)</c>) could be collected and its storage's finalizer free the memory while the op still reads or
    /// writes it. Passing the operands here keeps them reachable until the op returns, as <see cref="GC.KeepAlive"/> does.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void KeepOperandsAlive(params ReadOnlySpan<Tensor?> operands) => _ = operands.Length;

    /// <inheritdoc cref="KeepOperandsAlive(ReadOnlySpan{Tensor?})"/>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void KeepOperandsAlive(PagedBatch batch, params ReadOnlySpan<Tensor?> operands)
    {
        GC.KeepAlive(batch.BlockTables); GC.KeepAlive(batch.QueryStarts); GC.KeepAlive(batch.ContextLengths); GC.KeepAlive(batch.Slots);
        _ = operands.Length;
    }

    /// <summary>Address of the first element of a view on this backend.</summary>
    private T* Ptr<T>(Tensor t) where T : unmanaged
    {
        if (t.Storage is not CpuStorage s || !ReferenceEquals(s.Backend, this))
            throw new ArgumentException($"tensor {t} does not live on this CPU backend");
        return (T*)s.Pointer + t.Offset;
    }

    private static byte* BytePtr(Tensor t)
    {
        if (t.Storage is not CpuStorage s)
            throw new ArgumentException($"tensor {t} does not live on the CPU backend");
        return (byte*)s.Pointer + t.Offset * t.DType.SizeInBytes();
    }

    private static void RequireShape(string op, string name, Tensor t, Shape expected)
    {
        if (t.Shape != expected)
            throw new ArgumentException($"{op}: {name} has shape {t.Shape}, expected {expected}", name);
    }

    private static void RequireSameShape(string op, string name, Tensor t, string otherName, Tensor other)
    {
        if (t.Shape != other.Shape)
            throw new ArgumentException($"{op}: {name} has shape {t.Shape} but {otherName} has shape {other.Shape}; they must be equal", name);
    }

    private static void RequireRank(string op, string name, Tensor t, int rank, string dims)
    {
        if (t.Rank != rank)
            throw new ArgumentException($"{op}: {name} must be rank {rank} {dims}, got shape {t.Shape}", name);
    }

    private static void RequireDType(string op, string name, Tensor t, DType expected)
    {
        if (t.DType != expected)
            throw new ArgumentException($"{op}: {name} is {t.DType} but must be {expected}", name);
    }

    /// <summary>F32 or F64: the dtypes the CPU computes in.</summary>
    private static void RequireComputeDType(string op, string name, Tensor t)
    {
        if (t.DType is not (DType.F32 or DType.F64))
            throw new ArgumentException($"{op}: {name} is {t.DType}; the CPU backend computes in F32 or F64 (cast BF16/F16 storage with Copy first)", name);
    }

    private static void RequireContiguous(string op, string name, Tensor t)
    {
        if (!t.IsContiguous)
            throw new ArgumentException($"{op}: {name} {t.Shape} with strides ({string.Join(", ", t.Strides.ToArray())}) must be contiguous; copy it first", name);
    }

    /// <summary>The last dimension must have stride 1 (views of fused buffers are fine).</summary>
    private static void RequireUnitLastStride(string op, string name, Tensor t)
    {
        if (t.Rank > 0 && t.Shape[^1] > 1 && t.Stride(-1) != 1)
            throw new ArgumentException($"{op}: {name} {t.Shape} must have a contiguous last dimension (stride 1), got stride {t.Stride(-1)}", name);
    }

    private static void RequireScalar(string op, string name, Tensor t)
    {
        if (t.NumElements != 1)
            throw new ArgumentException($"{op}: {name} must hold one element, got shape {t.Shape}", name);
        RequireComputeDType(op, name, t);
    }

    /// <summary>Reads a one-element F32/F64 tensor.</summary>
    private double ReadScalarValue(Tensor t) => t.DType == DType.F64 ? *Ptr<double>(t) : *Ptr<float>(t);

    /// <summary>Writes a one-element F32/F64 tensor.</summary>
    private void WriteScalarValue(Tensor t, double value)
    {
        if (t.DType == DType.F64) *Ptr<double>(t) = value; else *Ptr<float>(t) = (float)value;
    }

    /// <summary>
    /// Runs <paramref name="body"/>(start, end) over [0, count) split into contiguous chunks, on up to
    /// <see cref="Threads"/> threads when the total work (count * workPerItem scalar ops) is large enough.
    /// </summary>
    private void ParallelChunks(long count, long workPerItem, Action<long, long> body)
    {
        if (count <= 0) return;
        long total = count * Math.Max(1, workPerItem);
        int chunks = (int)Math.Min(Math.Min(Threads, count), Math.Max(1, total / MinWorkPerThread));
        if (chunks <= 1) { body(0, count); return; }
        Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = Threads }, i =>
        {
            long start = count * i / chunks, end = count * (i + 1) / chunks;
            body(start, end);
        });
    }

    /// <summary>
    /// Runs <paramref name="body"/>(start, end) over [0, count) in blocks of <paramref name="block"/> elements (the last
    /// one shorter), taken by up to <see cref="Threads"/> threads as they come free, when the total work is large enough;
    /// unlike <see cref="ParallelChunks"/>'s one chunk per thread, a thread that is slowed down does not hold up the rest.
    /// </summary>
    private void ParallelBlocks(long count, long block, long workPerItem, Action<long, long> body)
    {
        if (count <= 0) return;
        long blocks = (count + block - 1) / block;
        if (blocks <= 1 || Threads == 1 || count * Math.Max(1, workPerItem) < 2 * MinWorkPerThread) { body(0, count); return; }
        Parallel.For(0L, blocks, new ParallelOptions { MaxDegreeOfParallelism = Threads }, b =>
            body(b * block, Math.Min(count, (b + 1) * block)));
    }

    /// <summary>Number of chunks <see cref="ParallelChunks"/> would use (for per-chunk partial sums).</summary>
    private int ChunkCount(long count, long workPerItem)
    {
        if (count <= 0) return 0;
        long total = count * Math.Max(1, workPerItem);
        return (int)Math.Min(Math.Min(Threads, count), Math.Max(1, total / MinWorkPerThread));
    }

    /// <summary>Runs <paramref name="body"/>(chunk, start, end) for exactly <paramref name="chunks"/> chunks.</summary>
    private void ParallelFixedChunks(long count, int chunks, Action<int, long, long> body)
    {
        if (chunks <= 1) { body(0, 0, count); return; }
        Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = Threads }, i =>
            body(i, count * i / chunks, count * (i + 1) / chunks));
    }

    private static T Cast<T>(double value) where T : IFloatingPointIeee754<T> => T.CreateTruncating(value);
}
