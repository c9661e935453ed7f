namespace Tessera.Inference.Serving;

/// <summary>
/// A cumulative histogram of durations in seconds with fixed upper bounds (Prometheus' histogram type), safe to update from
/// the engine's loop while the server reads it.
/// </summary>
public sealed class LatencyHistogram
{
    private readonly double[] _bounds;
    private readonly long[] _counts;
    private double _sum;
    private long _count;
    private readonly Lock _lock = new();

    /// <summary>A histogram with the given increasing upper bounds (seconds); +Inf is implied.</summary>
    public LatencyHistogram(params double[] bounds)
    {
        for (int i = 1; i < bounds.Length; i++)
            if (!(bounds[i] > bounds[i - 1])) throw new ArgumentException("LatencyHistogram: bounds must increase");
        _bounds = bounds;
        _counts = new long[bounds.Length];
    }

    /// <summary>The upper bounds.</summary>
    public IReadOnlyList<double> Bounds => _bounds;

    /// <summary>Records one duration.</summary>
    public void Observe(double seconds)
    {
        lock (_lock)
        {
            for (int i = 0; i < _bounds.Length; i++) if (seconds <= _bounds[i]) _counts[i]++;
            _sum += seconds;
            _count++;
        }
    }

    /// <summary>Cumulative counts per bound, the total count and the sum, read together.</summary>
    public (long[] Cumulative, long Count, double Sum) Snapshot()
    {
        lock (_lock) return ((long[])_counts.Clone(), _count, _sum);
    }

    /// <summary>The q-quantile estimated from the buckets (the upper bound of the bucket holding it), NaN when empty.</summary>
    public double Quantile(double q)
    {
        var (cumulative, count, _) = Snapshot();
        if (count == 0) return double.NaN;
        long rank = (long)Math.Ceiling(q * count);
        for (int i = 0; i < cumulative.Length; i++) if (cumulative[i] >= rank) return _bounds[i];
        return double.PositiveInfinity;
    }
}
