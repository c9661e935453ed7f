using Tessera.Tensors;

namespace Tessera.Cuda;

// The inference scope: while one is open, the matrix-vector kernels read their first weights before pdl_wait, but only
// when the kernel in front of them was also launched in the scope (so work from before it is never overlapped); and the
// decode attention over device-side positions is chosen for the scope's longest cache, not the cache's capacity.
public sealed unsafe partial class CudaBackend : IInferenceScope
{
    private int _inferenceDepth;
    private bool _previousLaunchInScope;
    private int _longestCache = int.MaxValue;

    /// <inheritdoc/>
    public IDisposable EnterInference(int longestCache = int.MaxValue)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(longestCache);
        if (_inferenceDepth++ == 0) _previousLaunchInScope = false;
        var scope = new Scope(this, _longestCache);
        _longestCache = Math.Min(_longestCache, longestCache);
        return scope;
    }

    /// <summary>The longest cache an open scope promises (<see cref="IInferenceScope.EnterInference"/>); int.MaxValue outside one.</summary>
    internal int LongestCache => _longestCache;

    /// <inheritdoc/>
    /// <remarks>The decode attention's choice changes once, at <see cref="FlashDecodeGroupMinKeys"/> positions (per-query-head
    /// below, grouped from there), unless <see cref="CudaBackendOptions.DecodeAttention"/> forces one kernel.</remarks>
    public int CacheBound(int length, int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, Math.Max(1, length));
        return DecodeGrouped is null && length < FlashDecodeGroupMinKeys ? Math.Min(capacity, FlashDecodeGroupMinKeys - 1) : capacity;
    }

    /// <summary>Whether the next matrix-vector launch may load weights before waiting on its predecessor (never when
    /// <see cref="CudaBackendOptions.EarlyWeightLoads"/> is off).</summary>
    internal bool EarlyWeights => Options.EarlyWeightLoads && _inferenceDepth > 0 && _previousLaunchInScope;

    /// <summary>Called after every launch: the next kernel's predecessor is in a scope, or not.</summary>
    private void NoteLaunch() => _previousLaunchInScope = _inferenceDepth > 0;

    private sealed class Scope(CudaBackend backend, int outerLongestCache) : IDisposable
    {
        private bool _closed;

        public void Dispose()
        {
            if (_closed) return;
            _closed = true;
            // Scopes closed out of order: the last one to close leaves no promise behind.
            if (--backend._inferenceDepth == 0)
            {
                backend._previousLaunchInScope = false;
                backend._longestCache = int.MaxValue;
            }
            else backend._longestCache = outerLongestCache;
        }
    }
}
