using System.Globalization;
using System.Text;

namespace Tessera.Cuda.Runtime;

/// <summary>
/// Opt-in per-op timing on one stream: a pair of CUDA events around each launch (kernel, cuBLASLt product,
/// device copy), resolved later and summed per op name. The events serialize nothing beyond the stream's own
/// order, but recording them adds a little host work per op, so a profiled step runs somewhat slower than a plain one;
/// the table's shares are what it is for. <see cref="CudaBackend"/> turns it on when its options ask
/// (<see cref="CudaBackendOptions.ProfileOps"/>).
/// </summary>
public sealed class CudaOpProfiler : IDisposable
{
    private const int MaxPending = 8192;
    private readonly CudaDevice _device;
    private readonly CudaStream _stream;
    private readonly Stack<CudaEvent> _free = new();
    private readonly List<(string Name, CudaEvent Start, CudaEvent End)> _pending = new();
    private readonly Dictionary<string, (long Calls, double Milliseconds)> _totals = new();
    private CudaEvent? _open;
    private string? _openName;

    /// <summary>A profiler for the ops enqueued on <paramref name="stream"/>.</summary>
    public CudaOpProfiler(CudaDevice device, CudaStream stream)
    {
        _device = device;
        _stream = stream;
    }

    /// <summary>Marks the start of op <paramref name="name"/> (the next <see cref="End"/> closes it).</summary>
    public void Begin(string name)
    {
        _open = Rent();
        _openName = name;
        _open.Record(_stream);
    }

    /// <summary>Marks the end of the op opened by <see cref="Begin"/>.</summary>
    public void End()
    {
        if (_open is null || _openName is null) return;
        var end = Rent();
        end.Record(_stream);
        _pending.Add((_openName, _open, end));
        _open = null;
        _openName = null;
        if (_pending.Count >= MaxPending) Resolve();
    }

    /// <summary>Forgets every total so far (e.g. after warm-up steps).</summary>
    public void Reset()
    {
        Resolve();
        _totals.Clear();
    }

    /// <summary>Per op name: calls and summed milliseconds, largest first (waits for pending work).</summary>
    public IReadOnlyList<(string Name, long Calls, double Milliseconds)> Totals()
    {
        Resolve();
        return _totals.Select(kv => (kv.Key, kv.Value.Calls, kv.Value.Milliseconds)).OrderByDescending(r => r.Milliseconds).ToList();
    }

    /// <summary>A markdown table of <see cref="Totals"/>: op, calls, total ms, ms per call, share of the profiled time.</summary>
    public string Table(int steps = 1)
    {
        var rows = Totals();
        double all = rows.Sum(r => r.Milliseconds);
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"| op | calls/step | ms/step | us/call | share |");
        sb.AppendLine("|---|---|---|---|---|");
        foreach (var (name, calls, ms) in rows)
            sb.AppendLine(CultureInfo.InvariantCulture,
                $"| {name} | {calls / (double)steps:F0} | {ms / steps:F2} | {1000 * ms / Math.Max(calls, 1):F1} | {ms / Math.Max(all, 1e-9):P1} |");
        sb.AppendLine(CultureInfo.InvariantCulture, $"| total | {rows.Sum(r => r.Calls) / (double)steps:F0} | {all / steps:F2} | | 100 % |");
        return sb.ToString();
    }

    private CudaEvent Rent() => _free.Count > 0 ? _free.Pop() : new CudaEvent(_device);

    private void Resolve()
    {
        if (_pending.Count == 0) return;
        _pending[^1].End.Synchronize();
        foreach (var (name, start, end) in _pending)
        {
            double ms = end.ElapsedSince(start);
            _totals[name] = _totals.TryGetValue(name, out var t) ? (t.Calls + 1, t.Milliseconds + ms) : (1, ms);
            _free.Push(start);
            _free.Push(end);
        }
        _pending.Clear();
    }

    /// <summary>Destroys the events.</summary>
    public void Dispose()
    {
        foreach (var (_, s, e) in _pending) { s.Dispose(); e.Dispose(); }
        _pending.Clear();
        _open?.Dispose();
        while (_free.Count > 0) _free.Pop().Dispose();
    }
}
