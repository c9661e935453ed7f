namespace Tessera.Tensors;

/// <summary>A recorded sequence of ops (see <see cref="IGraphCapture"/>); disposing it frees the recording.</summary>
public interface ICapturedGraph : IDisposable
{
    /// <summary>Enqueues the recorded ops again, in order, on the backend's stream; returns at once.</summary>
    void Replay();
}
