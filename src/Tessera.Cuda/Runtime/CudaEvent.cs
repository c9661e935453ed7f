using static Tessera.Cuda.Interop.CudaDriver;

namespace Tessera.Cuda.Runtime;

/// <summary>A marker in a stream: to wait for the work before it, or to time device work.</summary>
public sealed class CudaEvent : IDisposable
{
    private readonly CudaDevice _device;

    /// <summary>Creates an event; <paramref name="timing"/> false makes a lighter event that cannot be timed.</summary>
    public unsafe CudaEvent(CudaDevice device, bool timing = true)
    {
        _device = device;
        device.MakeCurrent();
        IntPtr e;
        Check(cuEventCreate(&e, timing ? CU_EVENT_DEFAULT : CU_EVENT_DISABLE_TIMING), "cuEventCreate");
        Handle = e;
    }

    internal IntPtr Handle { get; private set; }

    /// <summary>Records the event at the current end of <paramref name="stream"/>.</summary>
    public void Record(CudaStream stream) => Check(cuEventRecord(Handle, stream.Handle), "cuEventRecord");

    /// <summary>Waits on the host until the recorded work has finished.</summary>
    public void Synchronize()
    {
        _device.MakeCurrent();
        Check(cuEventSynchronize(Handle), "cuEventSynchronize");
    }

    /// <summary>True when the work recorded before the event has finished (or it was never recorded); never blocks (cuEventQuery).</summary>
    public bool IsComplete()
    {
        int status = cuEventQuery(Handle);
        if (status == CUDA_ERROR_NOT_READY) return false;
        Check(status, "cuEventQuery");
        return true;
    }

    /// <summary>Milliseconds between <paramref name="start"/> and this event (both recorded, this one finished).</summary>
    public unsafe float ElapsedSince(CudaEvent start)
    {
        float ms;
        Check(cuEventElapsedTime(&ms, start.Handle, Handle), "cuEventElapsedTime");
        return ms;
    }

    /// <summary>Destroys the event.</summary>
    public void Dispose()
    {
        if (Handle == IntPtr.Zero) return;
        _device.MakeCurrent();
        cuEventDestroy(Handle);
        Handle = IntPtr.Zero;
    }
}
