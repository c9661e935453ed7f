using Tessera.Cuda.Runtime;
using Tessera.Tensors;
using static Tessera.Cuda.Interop.CudaDriver;

namespace Tessera.Cuda;

// Recording the ops of a step into a CUDA graph (stream capture) and replaying it.
public sealed unsafe partial class CudaBackend : IGraphCapture
{
    private bool _capturing;

    /// <inheritdoc/>
    /// <remarks>
    /// Stream capture in relaxed mode (kernel modules and cuBLASLt plans made on first use are allowed; the
    /// caller runs the body once before recording anyway). Host transfers and tensor allocations throw while
    /// recording: their results would be baked into the graph. Returns null while the per-op profiler is on,
    /// whose event pairs cannot be read back from a replay.
    /// </remarks>
    public ICapturedGraph? Capture(Action body)
    {
        ArgumentNullException.ThrowIfNull(body);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Profiler is not null) return null;
        if (_capturing) throw new InvalidOperationException("CudaBackend.Capture: already recording a graph on this stream");
        CudaDevice.MakeCurrent();
        var liveBefore = _allocator.LivePointers();
        Check(cuStreamBeginCapture(Stream.Handle, CU_STREAM_CAPTURE_MODE_RELAXED), "cuStreamBeginCapture");
        _capturing = true;
        IntPtr graph = IntPtr.Zero;
        try
        {
            body();
        }
        catch
        {
            _capturing = false;
            // End the capture so the stream is usable again; the partial graph is discarded.
            if (cuStreamEndCapture(Stream.Handle, &graph) == CUDA_SUCCESS && graph != IntPtr.Zero) cuGraphDestroy(graph);
            // Scratch the body allocated before it failed was graph memory of the discarded recording.
            _allocator.ForgetAllocationsSince(liveBefore);
            throw;
        }
        _capturing = false;
        Check(cuStreamEndCapture(Stream.Handle, &graph), "cuStreamEndCapture");
        try
        {
            IntPtr exec;
            Check(cuGraphInstantiateWithFlags(&exec, graph, 0), "cuGraphInstantiateWithFlags");
            return new CudaGraph(CudaDevice, Stream, exec);
        }
        finally
        {
            cuGraphDestroy(graph);
        }
    }

    /// <summary>Throws when a graph is being recorded: <paramref name="what"/> cannot be part of one.</summary>
    internal void RefuseWhileCapturing(string what)
    {
        if (_capturing)
            throw new InvalidOperationException($"CudaBackend: {what} while recording a CUDA graph would bake its result into every replay; " +
                "take inputs from device buffers, and run the step once before recording so its buffers exist");
    }
}
