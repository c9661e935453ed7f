using System.Buffers;
using System.Numerics;
using System.Runtime.InteropServices;
using Tessera.Tensors;

namespace Tessera.Distributed.InProcess;

/// <summary>
/// <see cref="HostTransport"/>'s work: executes an in-process operation once every participant has arrived: stages the tensors through
/// pooled host buffers (CopyToHost / CopyFromHost of each tensor's own backend) and reduces in rank
/// order 0 .. Size-1, so every rank gets bit-identical results equal to a sequential sum in that order.
/// </summary>
internal static class HostCollectives
{
    /// <summary>Executes the operation of <paramref name="contributions"/> (the participants' matched calls, in group-rank order) in a group of <paramref name="size"/>.</summary>
    public static void Execute(IReadOnlyList<Contribution> contributions, int size)
    {
        var cs = contributions as Contribution[] ?? contributions.ToArray();
        var first = cs[0];
        if (first.Kind == CollectiveKind.Barrier) return;
        var dtype = (first.Input ?? first.Output)!.DType;
        switch (first.Kind)
        {
            case CollectiveKind.AllReduce:
            case CollectiveKind.ReduceScatter:
                switch (dtype)
                {
                    case DType.F32: Reduce<float>(cs, size); break;
                    case DType.F64: Reduce<double>(cs, size); break;
                    case DType.I32: Reduce<int>(cs, size); break;
                    default: throw new NotSupportedException($"reduction over {dtype}");
                }
                break;
            default:
                switch (dtype)
                {
                    case DType.F32: Move<float>(cs, size); break;
                    case DType.F64: Move<double>(cs, size); break;
                    case DType.I32: Move<int>(cs, size); break;
                    case DType.BF16: Move<BFloat16>(cs, size); break;
                    case DType.F16: Move<Half>(cs, size); break;
                    case DType.U16: Move<ushort>(cs, size); break;
                    case DType.I8: Move<sbyte>(cs, size); break;
                    case DType.F8E4M3: Move<byte>(cs, size); break;
                    default: throw new NotSupportedException($"data movement of {dtype}");
                }
                break;
        }
    }

    private static void Reduce<T>(Contribution[] cs, int size) where T : unmanaged, INumber<T>
    {
        var first = cs[0];
        int total = checked((int)first.Input!.NumElements);
        var accArray = ArrayPool<T>.Shared.Rent(total);
        var tmpArray = ArrayPool<T>.Shared.Rent(total);
        try
        {
            var acc = accArray.AsSpan(0, total);
            var tmp = tmpArray.AsSpan(0, total);
            first.Input.Backend.CopyToHost(first.Input, acc);
            for (int r = 1; r < cs.Length; r++)
            {
                var input = cs[r].Input!;
                input.Backend.CopyToHost(input, tmp);
                if (first.Op == ReduceOp.Max) MaxInto(acc, tmp); else AddInto(acc, tmp);
            }
            if (first.Op == ReduceOp.Average)
            {
                var n = T.CreateChecked(size);
                for (int i = 0; i < acc.Length; i++) acc[i] /= n;
            }
            int chunk = first.Kind == CollectiveKind.ReduceScatter ? total / size : total;
            foreach (var c in cs)
            {
                var output = c.Output!;
                int start = first.Kind == CollectiveKind.ReduceScatter ? c.Rank * chunk : 0;
                output.Backend.CopyFromHost<T>(acc.Slice(start, chunk), output);
            }
        }
        finally
        {
            ArrayPool<T>.Shared.Return(accArray);
            ArrayPool<T>.Shared.Return(tmpArray);
        }
    }

    private static void Move<T>(Contribution[] cs, int size) where T : unmanaged
    {
        var first = cs[0];
        switch (first.Kind)
        {
            case CollectiveKind.AllGather:
            {
                int n = checked((int)first.Input!.NumElements);
                var array = ArrayPool<T>.Shared.Rent(checked(n * size));
                try
                {
                    var all = array.AsSpan(0, n * size);
                    foreach (var c in cs) c.Input!.Backend.CopyToHost(c.Input, all.Slice(c.Rank * n, n));
                    foreach (var c in cs) c.Output!.Backend.CopyFromHost<T>(all, c.Output);
                }
                finally { ArrayPool<T>.Shared.Return(array); }
                break;
            }
            case CollectiveKind.Broadcast:
            {
                var root = cs.First(c => c.Rank == first.Root).Input!;
                Relay<T>(root, cs.Where(c => c.Rank != first.Root).Select(c => c.Output!));
                break;
            }
            case CollectiveKind.AllToAll:
                Exchange<T>(cs);
                break;
            case CollectiveKind.Send:
            case CollectiveKind.Recv:
            {
                var send = cs.First(c => c.Kind == CollectiveKind.Send).Input!;
                var recv = cs.First(c => c.Kind == CollectiveKind.Recv).Output!;
                Relay<T>(send, [recv]);
                break;
            }
            default:
                throw new NotSupportedException($"{first.Kind} is not a data-movement operation");
        }
    }

    /// <summary>All-to-all: every rank's input staged once, then each output assembled on the host from its senders' row blocks in rank order.</summary>
    private static void Exchange<T>(Contribution[] cs) where T : unmanaged
    {
        long row = ProcessGroup.RowElements(cs[0].Input!);
        var inputs = new T[cs.Length][];
        foreach (var c in cs)
        {
            inputs[c.Rank] = new T[c.Input!.NumElements];
            if (inputs[c.Rank].Length > 0) c.Input.Backend.CopyToHost(c.Input, inputs[c.Rank].AsSpan());
        }
        foreach (var d in cs)
        {
            var received = new T[d.Output!.NumElements];
            long at = 0;
            foreach (var s in cs)
            {
                long offset = 0;                                   // rows rank s sends to ranks before d
                for (int r = 0; r < d.Rank; r++) offset += s.InputSplits![r];
                long n = s.InputSplits![d.Rank] * row;
                inputs[s.Rank].AsSpan(checked((int)(offset * row)), checked((int)n)).CopyTo(received.AsSpan(checked((int)at)));
                at += n;
            }
            if (received.Length > 0) d.Output.Backend.CopyFromHost<T>(received, d.Output);
        }
    }

    private static void Relay<T>(Tensor source, IEnumerable<Tensor> destinations) where T : unmanaged
    {
        int n = checked((int)source.NumElements);
        var array = ArrayPool<T>.Shared.Rent(n);
        try
        {
            var buffer = array.AsSpan(0, n);
            source.Backend.CopyToHost(source, buffer);
            foreach (var d in destinations) d.Backend.CopyFromHost<T>(buffer, d);
        }
        finally { ArrayPool<T>.Shared.Return(array); }
    }

    // Element-wise, so SIMD gives the same bits as the scalar loop (no reassociation).
    private static void AddInto<T>(Span<T> acc, ReadOnlySpan<T> x) where T : unmanaged, INumber<T>
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated && Vector<T>.IsSupported)
        {
            var va = MemoryMarshal.Cast<T, Vector<T>>(acc);
            var vx = MemoryMarshal.Cast<T, Vector<T>>(x);
            for (int j = 0; j < va.Length; j++) va[j] += vx[j];
            i = va.Length * Vector<T>.Count;
        }
        for (; i < acc.Length; i++) acc[i] += x[i];
    }

    private static void MaxInto<T>(Span<T> acc, ReadOnlySpan<T> x) where T : unmanaged, INumber<T>
    {
        for (int i = 0; i < acc.Length; i++) acc[i] = T.Max(acc[i], x[i]);
    }
}
