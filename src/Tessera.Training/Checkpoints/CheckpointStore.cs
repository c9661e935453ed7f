namespace Tessera.Training.Checkpoints;

/// <summary>
/// A folder of checkpoints, one sub-directory per step ("step_000300"), plus a "latest" file
/// naming the newest complete one. A checkpoint is written into a hidden temporary directory,
/// every file flushed to disk, its manifest written last, and only then renamed into place and
/// named by "latest": a run killed mid-save leaves at most a temporary directory that no resume
/// will pick up.
/// </summary>
public sealed class CheckpointStore
{
    /// <summary>Opens (without creating) the store at <paramref name="root"/>.</summary>
    public CheckpointStore(string root) => Root = Path.GetFullPath(root);

    /// <summary>The store's folder.</summary>
    public string Root { get; }

    /// <summary>Directory name used for <paramref name="step"/>.</summary>
    public static string StepName(int step) => $"step_{step:D6}";

    /// <summary>
    /// Writes a checkpoint for <paramref name="step"/>: <paramref name="writeFiles"/> fills a temporary
    /// directory; then the manifest is added and the directory moved into place. Returns its path.
    /// </summary>
    public string Save(int step, Action<string> writeFiles)
    {
        Directory.CreateDirectory(Root);
        string final = Path.Combine(Root, StepName(step));
        string temp = Path.Combine(Root, $".{StepName(step)}.tmp-{Guid.NewGuid():N}");
        Directory.CreateDirectory(temp);
        try
        {
            writeFiles(temp);
            var manifest = new CheckpointManifest();
            foreach (var file in Directory.EnumerateFiles(temp).Order(StringComparer.Ordinal))
            {
                FlushToDisk(file);
                manifest.Files[Path.GetFileName(file)] = CheckpointManifest.Describe(file);
            }
            AtomicFile.WriteAllText(Path.Combine(temp, "manifest.json"),
                System.Text.Json.JsonSerializer.Serialize(manifest, new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            if (Directory.Exists(final))
            {
                // Replacing a checkpoint of the same step: move the old one aside first so a crash leaves one of the two intact.
                string old = Path.Combine(Root, $".{StepName(step)}.old-{Guid.NewGuid():N}");
                Directory.Move(final, old);
                Directory.Move(temp, final);
                Directory.Delete(old, recursive: true);
            }
            else Directory.Move(temp, final);
            AtomicFile.WriteAllText(Path.Combine(Root, "latest"), StepName(step) + "\n");
            return final;
        }
        catch
        {
            try { if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>The newest complete checkpoint named by "latest", or null when the store has none.</summary>
    public string? Latest()
    {
        var pointer = Path.Combine(Root, "latest");
        if (!File.Exists(pointer)) return null;
        var name = File.ReadAllText(pointer).Trim();
        if (name.Length == 0 || name.Contains('/') || name.Contains('\\') || name.StartsWith('.'))
            throw new CheckpointException($"{pointer}: does not name a checkpoint directory ('{name}')");
        var dir = Path.Combine(Root, name);
        if (!Directory.Exists(dir)) throw new CheckpointException($"{pointer}: names {name}, which does not exist in {Root}");
        return dir;
    }

    private static void FlushToDisk(string file)
    {
        using var s = new FileStream(file, FileMode.Open, FileAccess.ReadWrite, FileShare.Read);
        s.Flush(flushToDisk: true);
    }
}
