using Tessera.Training.Checkpoints;

namespace Tessera.Training.Runs;

/// <summary>
/// The folder of one training run: <c>checkpoints/</c> (a <see cref="CheckpointStore"/>), <c>metrics.jsonl</c>, the
/// plot of the metrics (<c>metrics.png</c>) and, for the embedded corpus, <c>data/</c>. A run directory belongs to one
/// run: a new run refuses a directory that already holds one (<see cref="EnsureNoRun"/>), so two runs never mix their
/// metrics or overwrite each other's checkpoints; continuing one is a resume.
/// </summary>
public sealed class RunDirectory
{
    /// <summary>The run at <paramref name="root"/> (nothing is created).</summary>
    public RunDirectory(string root)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(root);
        Root = Path.GetFullPath(root);
        Checkpoints = new CheckpointStore(Path.Combine(Root, "checkpoints"));
    }

    /// <summary>The run's folder (absolute).</summary>
    public string Root { get; }

    /// <summary>Its checkpoints.</summary>
    public CheckpointStore Checkpoints { get; }

    /// <summary>One JSON object per logged step (<see cref="MetricsLog"/>).</summary>
    public string MetricsPath => Path.Combine(Root, "metrics.jsonl");

    /// <summary>The plot of <see cref="MetricsPath"/>.</summary>
    public string PlotPath => Path.Combine(Root, "metrics.png");

    /// <summary>Where the run's data and model came from (<see cref="RunSources"/>).</summary>
    public string SourcesPath => Path.Combine(Root, "run.json");

    /// <summary>Token shards written for the run (the embedded corpus).</summary>
    public string DataPath => Path.Combine(Root, "data");

    /// <summary>
    /// What of a run the folder holds (metrics, checkpoints, a "latest" pointer), in words, or null when it holds none.
    /// Prepared data alone (<c>data/</c>) is not a run: a run that failed before its first step can be started again.
    /// </summary>
    public string? DescribeExistingRun()
    {
        var found = new List<string>();
        if (File.Exists(MetricsPath) && new FileInfo(MetricsPath).Length > 0)
            found.Add($"metrics.jsonl ({File.ReadLines(MetricsPath).Count()} logged steps)");
        var saved = Checkpoints.Checkpoints();
        if (saved.Count > 0)
            found.Add(saved.Count == 1 ? $"a checkpoint at step {saved[0].Step}" : $"{saved.Count} checkpoints, steps {saved[0].Step} to {saved[^1].Step}");
        else if (File.Exists(Path.Combine(Checkpoints.Root, "latest")))
            found.Add("checkpoints/latest");
        return found.Count == 0 ? null : string.Join(" and ", found);
    }

    /// <summary>Records where the run's data and model come from (atomically; paths made absolute).</summary>
    public void WriteSources(RunSources sources)
    {
        static string? Full(string? path) => path is null || path == "byte" || !LooksLikePath(path) ? path : Path.GetFullPath(path);
        var absolute = sources with { Data = Full(sources.Data), ValidationData = Full(sources.ValidationData), Model = Full(sources.Model)!, Tokenizer = Full(sources.Tokenizer)! };
        Directory.CreateDirectory(Root);
        AtomicFile.WriteAllText(SourcesPath, System.Text.Json.JsonSerializer.Serialize(absolute, new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>The recorded sources, or null for a run that has none (started before run.json existed, or elsewhere).</summary>
    public RunSources? ReadSources()
    {
        if (!File.Exists(SourcesPath)) return null;
        try { return System.Text.Json.JsonSerializer.Deserialize<RunSources>(File.ReadAllText(SourcesPath)); }
        catch (System.Text.Json.JsonException e) { throw new RunDirectoryException($"{SourcesPath}: not valid JSON ({e.Message}); give --data (and --val-data) explicitly or delete the file"); }
    }

    // A preset name ("gpt2-tiny") stays a name; anything with a directory separator or that exists is a path.
    private static bool LooksLikePath(string text) => text.Contains('/') || text.Contains('\\') || Directory.Exists(text) || File.Exists(text);

    /// <summary>Throws <see cref="RunDirectoryException"/> when the folder already holds a run; says how to continue it or start afresh.</summary>
    public void EnsureNoRun()
    {
        if (DescribeExistingRun() is string existing)
            throw new RunDirectoryException(
                $"{Root} already holds a run ({existing}); resume it, or start the new run in another directory (or delete this one)");
    }
}
