namespace Tessera.Tensors;

/// <summary>
/// A backend that can copy device values to the host without waiting for them (vLLM's asynchronous output copy): the copy
/// is enqueued behind the work enqueued so far, into host memory the device writes directly (pinned memory on a GPU), and
/// the host waits only when it reads the values. A serving loop can so enqueue the next step before the previous step's
/// sampled tokens reach it. Backends without it compute synchronously and copy with <see cref="IBackend.CopyToHost{T}"/>.
/// </summary>
public interface IAsyncReadback
{
    /// <summary>A buffer for up to <paramref name="capacity"/> I32 values; the caller disposes it.</summary>
    IReadbackBuffer CreateReadbackBuffer(int capacity);
}
