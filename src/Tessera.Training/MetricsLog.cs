using System.Globalization;
using System.Text;

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
        sb.Append('}');
        _writer.WriteLine(sb.ToString());
        _writer.Flush();
    }

    public void Dispose() => _writer.Dispose();
}
