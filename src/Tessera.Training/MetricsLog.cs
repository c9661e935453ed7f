using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Tessera.Training;

/// <summary>Appends one JSON object per logged step to a JSONL file (flushed per line).</summary>
public sealed class MetricsLog : IDisposable
{
    private readonly StreamWriter _writer;

    /// <summary>Opens (appending) <paramref name="path"/>.</summary>
    public MetricsLog(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".");
        _writer = new StreamWriter(new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.Read), new UTF8Encoding(false));
    }

    /// <summary>Writes one step.</summary>
    public void Append(StepMetrics m)
    {
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"{{\"step\":{m.Step},\"loss\":{m.Loss:R},\"lr\":{m.LearningRate:R},\"grad_norm\":{m.GradNorm:R},\"tokens_per_second\":{m.TokensPerSecond:F1},\"step_ms\":{m.StepMilliseconds:F2}");
        if (m.ValidationLoss is double v) sb.Append(CultureInfo.InvariantCulture, $",\"val_loss\":{v:R}");
        if (m.RouterAuxLoss is double aux) sb.Append(CultureInfo.InvariantCulture, $",\"router_aux_loss\":{aux:R}");
        sb.Append('}');
        _writer.WriteLine(sb.ToString());
        _writer.Flush();
    }

    public void Dispose() => _writer.Dispose();

    /// <summary>
    /// Reads a metrics file written by <see cref="Append"/>, in file order. <see cref="StepMetrics.TotalSteps"/> is not
    /// logged; it is set to the last step in the file. Throws <see cref="InvalidDataException"/> naming the line of a
    /// malformed entry.
    /// </summary>
    public static IReadOnlyList<StepMetrics> Read(string path)
    {
        var entries = new List<StepMetrics>();
        int lineNumber = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNumber++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            try
            {
                using var doc = JsonDocument.Parse(line);
                var e = doc.RootElement;
                double Number(string name) => e.GetProperty(name).GetDouble();
                double? val = e.TryGetProperty("val_loss", out var v) ? v.GetDouble() : null;
                entries.Add(new StepMetrics(e.GetProperty("step").GetInt32(), 0, Number("loss"), Number("lr"), Number("grad_norm"),
                    Number("tokens_per_second"), Number("step_ms"), val));
            }
            catch (Exception ex) when (ex is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
            {
                // A run killed mid-write leaves at most a partial last line; anything else is damage worth naming.
                if (lineNumber > 0 && File.ReadLines(path).Skip(lineNumber).All(string.IsNullOrWhiteSpace)) break;
                throw new InvalidDataException($"{path}: line {lineNumber} is not a metrics entry ({ex.Message})", ex);
            }
        }
        int last = entries.Count > 0 ? entries.Max(m => m.Step) : 0;
        return entries.Select(m => m with { TotalSteps = last }).ToList();
    }

    /// <summary>
    /// Drops the entries after <paramref name="step"/> (atomically rewriting the file): a run resumed from step N
    /// repeats the steps after N, which a run that stopped without a checkpoint there had already logged.
    /// Returns how many entries were dropped.
    /// </summary>
    public static int TruncateAfter(string path, int step)
    {
        if (!File.Exists(path)) return 0;
        var keep = new List<string>();
        int dropped = 0;
        foreach (var line in File.ReadLines(path))
        {
            if (string.IsNullOrWhiteSpace(line)) continue;
            int? s = null;
            try
            {
                using var doc = JsonDocument.Parse(line);
                s = doc.RootElement.GetProperty("step").GetInt32();
            }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException) { }
            if (s is int n && n <= step) keep.Add(line);
            else dropped++;   // later steps, or a partial line from a run killed mid-write
        }
        if (dropped > 0) AtomicFile.WriteAllText(path, keep.Count == 0 ? "" : string.Join('\n', keep) + "\n");
        return dropped;
    }
}
