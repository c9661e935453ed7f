using System.Globalization;
using Spectre.Console;
using Tessera.Cuda;
using Tessera.Models;
using Tessera.Tensors;

namespace Tessera.Cli.Commands.Bench;

/// <summary>The result table of a benchmark (markdown, so that it pastes into docs/benchmarks.md) and its cell formats.</summary>
internal static class BenchTable
{
    public static Table Create(params string[] headings)
    {
        var table = new Table { Border = TableBorder.Markdown };
        foreach (var h in headings) table.AddColumn(new TableColumn(h));
        return table;
    }

    public static string Num(double value, string format) => value.ToString(format, CultureInfo.InvariantCulture);

    public static string Millions(long count) => Num(count / 1e6, count < 10_000_000 ? "F2" : "F1") + "M";

    public static string GiB(long? bytes) => bytes is long b ? Num(b / (double)(1L << 30), "F2") + " GiB" : "n/a";

    public static Func<long>? PeakBytes(IBackend backend) =>
        backend is CudaBackend cuda ? () => cuda.Allocator.Statistics.PeakBytesInUse : null;

    public static string Describe(string name, Transformer model)
    {
        var c = model.Config;
        return $"{name} ({c.Family}, {c.Layers} layers, {c.Embedding} wide, {c.Heads} heads, {model.Layout.ParameterCount:N0} parameters) in {model.DType}";
    }

    public static string DeviceName(IBackend backend, int threads) =>
        backend is CudaBackend cuda ? $"{cuda.CudaDevice.Name} ({backend.Device})" : $"{backend.Device} ({threads} threads)";

    /// <summary>A benchmark option record's own validation, as a usage error naming the options involved.</summary>
    public static T Validated<T>(Func<T> build, params (string Field, string Option)[] options)
    {
        try { return build(); }
        catch (ArgumentException e)
        {
            var named = options.Where(o => System.Text.RegularExpressions.Regex.IsMatch(e.Message, $@"\b{o.Field}\b")).Select(o => o.Option).ToList();
            throw new CommandLine.UsageException(named.Count == 0 ? e.Message : $"{string.Join(", ", named)}: {e.Message}");
        }
    }
}
