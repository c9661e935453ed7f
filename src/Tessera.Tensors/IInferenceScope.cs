namespace Tessera.Tensors;

/// <summary>
/// A backend that can use a caller's promise that the weights of its products do not change for a while, as when a
/// model decodes: nothing a decode step enqueues writes a parameter. The CUDA backend then lets each matrix-vector
/// product load its first weights before it waits on the kernel in front of it (programmatic dependent launch), so
/// those loads overlap that kernel's tail; outside a scope a product waits first, because the kernel in front could be an
/// optimizer step or a cast still writing the weight.
/// </summary>
public interface IInferenceScope
{
    /// <summary>
    /// Opens a scope (scopes nest). Until it is disposed, the caller promises that nothing it enqueues on this backend writes
    /// a tensor that a matrix product enqueued in the scope reads as its weight (b). Work enqueued before the scope is
    /// not covered: the first kernel in the scope still waits for it. With <paramref name="longestCache"/> the caller also
    /// promises that no sequence of a KV cache that an attention in the scope reads (by its device-side positions) holds
    /// more than that many positions, the scope's own appends included, also when the work is recorded and replayed:
    /// a backend may pick its decode attention for caches that long rather than for the cache's whole capacity.
    /// </summary>
    IDisposable EnterInference(int longestCache = int.MaxValue);

    /// <summary>
    /// The longest cache worth promising (<see cref="EnterInference"/>) while a cache of <paramref name="capacity"/>
    /// positions holds <paramref name="length"/>: the backend chooses the same kernels for every length from
    /// <paramref name="length"/> up to the value returned (<paramref name="capacity"/> where its choice never changes
    /// again). A caller that records its work records again once its cache passes it. By default the capacity.
    /// </summary>
    int CacheBound(int length, int capacity) => capacity;
}
