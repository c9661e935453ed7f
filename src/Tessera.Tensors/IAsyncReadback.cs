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

/// <summary>Host memory that a device copies I32 values into asynchronously (see <see cref="IAsyncReadback"/>).</summary>
public interface IReadbackBuffer : IDisposable
{
    /// <summary>Most values one copy holds.</summary>
    int Capacity { get; }

    /// <summary>Enqueues a copy of <paramref name="source"/> (contiguous I32, at most <see cref="Capacity"/> values) behind
    /// the work enqueued so far; does not wait. The buffer must not be read (<see cref="Wait"/>) by anyone else meanwhile.</summary>
    void Start(Tensor source);

    /// <summary>Waits until the last <see cref="Start"/>'s copy has landed and returns its values (valid until the next Start).</summary>
    ReadOnlySpan<int> Wait();
}
