namespace Tessera.Tensors;

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
