using static Tessera.Cuda.Interop.CudaDriver;

namespace Tessera.Cuda.Runtime;

/// <summary>An ordered queue of device work (a non-blocking CUDA stream).</summary>
public sealed class CudaStream : IDisposable
{
    private readonly CudaDevice _device;

    /// <summary>Creates a stream on <paramref name="device"/>.</summary>
    public unsafe CudaStream(CudaDevice device)
    {
        _device = device;
        device.MakeCurrent();
        IntPtr s;
        Check(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
        Handle = s;
    }

    internal IntPtr Handle { get; private set; }

    /// <summary>The CUstream handle, for libraries that enqueue on it (NCCL).</summary>
    public IntPtr NativeHandle => Handle;

    /// <summary>True when every operation enqueued so far has finished; never blocks (cuStreamQuery).</summary>
    public bool IsIdle()
    {
        int status = cuStreamQuery(Handle);
        if (status == CUDA_ERROR_NOT_READY) return false;
        Check(status, "cuStreamQuery");
        return true;
    }

    /// <summary>Waits until all work enqueued so far has finished.</summary>
    public void Synchronize()
    {
        _device.MakeCurrent();
        Check(cuStreamSynchronize(Handle), "cuStreamSynchronize");
    }

    /// <summary>Makes later work on this stream wait for <paramref name="event"/>.</summary>
    public void Wait(CudaEvent @event) => Check(cuStreamWaitEvent(Handle, @event.Handle, 0), "cuStreamWaitEvent");

    /// <summary>Destroys the stream (pending work still completes).</summary>
    public void Dispose()
    {
        if (Handle == IntPtr.Zero) return;
        _device.MakeCurrent();
        cuStreamDestroy(Handle);
        Handle = IntPtr.Zero;
    }
}
