using Tessera.Tensors;
using static Tessera.Cuda.Interop.CudaDriver;

namespace Tessera.Cuda.Runtime;

/// <summary>
/// An instantiated CUDA graph (cuGraphExec) recorded from a stream: <see cref="Replay"/> launches all of its
/// kernels, products and copies with one driver call. Scratch memory its ops allocated while recording is owned by
/// the graph (stream-ordered allocation nodes).
/// </summary>
public sealed class CudaGraph : ICapturedGraph
{
    private readonly CudaDevice _device;
    private readonly CudaStream _stream;
    private IntPtr _exec;

    internal CudaGraph(CudaDevice device, CudaStream stream, IntPtr exec)
    {
        _device = device;
        _stream = stream;
        _exec = exec;
    }

    /// <summary>How many times the graph was launched.</summary>
    public long Replays { get; private set; }

    /// <inheritdoc/>
    public void Replay()
    {
        ObjectDisposedException.ThrowIf(_exec == IntPtr.Zero, this);
        _device.MakeCurrent();
        Check(cuGraphLaunch(_exec, _stream.Handle), "cuGraphLaunch");
        Replays++;
    }

    /// <summary>Waits for launched replays, then frees the graph.</summary>
    public void Dispose()
    {
        if (_exec == IntPtr.Zero) return;
        _device.MakeCurrent();
        _stream.Synchronize();
        cuGraphExecDestroy(_exec);
        _exec = IntPtr.Zero;
    }
}
