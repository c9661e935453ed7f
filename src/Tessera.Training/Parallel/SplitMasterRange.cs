using Tessera.Tensors;

namespace Tessera.Training.Parallel;

/// <summary>
/// Split F32 masters (<see cref="Nn.MasterWeights.Split"/>) of a range held as two views, the BF16 values (the high halves)
/// and the U16 low words: read through a transient F32 tensor joined exactly, or written through one and split back.
/// The transient is freed after the call (ordered after the work queued on the backend's stream).
/// </summary>
internal static class SplitMasterRange
{
    /// <summary>Calls <paramref name="read"/> with the joined F32 masters of <paramref name="values"/> and <paramref name="lowWords"/> (valid during the call).</summary>
    public static T Read<T>(IBackend backend, Tensor values, Tensor lowWords, Func<Tensor, T> read)
    {
        var master = backend.Allocate(values.Shape, DType.F32);
        try
        {
            backend.JoinMasters(values, lowWords, master);
            return read(master);
        }
        finally { master.Storage.Dispose(); }
    }

    /// <summary>Calls <paramref name="write"/> to fill a transient F32 master, then splits it into <paramref name="values"/> and <paramref name="lowWords"/>.</summary>
    public static void Write(IBackend backend, Tensor values, Tensor lowWords, Action<Tensor> write)
    {
        var master = backend.Allocate(values.Shape, DType.F32);
        try
        {
            write(master);
            backend.SplitMasters(master, values, lowWords);
        }
        finally { master.Storage.Dispose(); }
    }
}
