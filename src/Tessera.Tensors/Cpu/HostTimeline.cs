using System.Diagnostics;

namespace Tessera.Tensors.Cpu;

/// <summary>
/// Numbered marks on the host's clock (<see cref="Stopwatch"/>): the timeline of a backend that finishes each op before it
/// returns, where the order of execution is the order of calls.
/// </summary>
public sealed class HostTimeline : IDeviceTimeline
{
    private readonly List<long> _ticks = [];

    /// <inheritdoc/>
    public void Mark(int index)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        while (_ticks.Count <= index) _ticks.Add(-1);
        _ticks[index] = Stopwatch.GetTimestamp();
    }

    /// <inheritdoc/>
    public double ElapsedMilliseconds(int from, int to)
    {
        if ((uint)from >= (uint)_ticks.Count || (uint)to >= (uint)_ticks.Count || _ticks[from] < 0 || _ticks[to] < 0)
            throw new ArgumentOutOfRangeException(nameof(to), $"HostTimeline: marks {from} and {to} must both have been recorded");
        return (_ticks[to] - _ticks[from]) * 1000.0 / Stopwatch.Frequency;
    }
}
