namespace Tessera.Tensors;

/// <summary>
/// A backend that can record the ops a piece of code enqueues and replay them later without the host running that
/// code again (CUDA graphs on the GPU). It pays where the host's per-op cost exceeds the device's work, as when a
/// model decodes one token for a small batch: hundreds of small launches per token.
/// <para>
/// Recording does not execute anything. A replay runs the same kernels on the same memory with the same arguments,
/// so the recorded code must take everything that changes between replays from device memory (a KV cache's
/// <c>Positions</c>, a token buffer the previous replay wrote) and must neither read to nor copy from the host.
/// Buffers it uses must exist before recording: run the code once normally first.
/// </para>
/// </summary>
public interface IGraphCapture
{
    /// <summary>
    /// Records what <paramref name="body"/> enqueues on this backend. Returns null when the backend cannot record
    /// now (e.g. its per-op profiler is on); the caller then runs the code itself each time.
    /// </summary>
    /// <exception cref="InvalidOperationException">The body tried a host transfer or an allocation while recording.</exception>
    ICapturedGraph? Capture(Action body);
}
