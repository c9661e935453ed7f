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

    /// <summary>
    /// The complete checkpoints in the store (directories "step_NNNNNN" with a manifest.json), oldest first, with their
    /// steps. Hidden temporary directories and directories without a manifest are not checkpoints.
    /// </summary>
    public IReadOnlyList<(int Step, string Directory)> Checkpoints()
    {
        if (!System.IO.Directory.Exists(Root)) return [];
        var found = new List<(int, string)>();
        foreach (var dir in System.IO.Directory.EnumerateDirectories(Root, "step_*"))
        {
            var name = Path.GetFileName(dir);
            if (int.TryParse(name.AsSpan("step_".Length), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int step)
                && File.Exists(Path.Combine(dir, "manifest.json")))
                found.Add((step, dir));
        }
        found.Sort((a, b) => a.Item1.CompareTo(b.Item1));
        return found;
    }

    /// <summary>
    /// Removes what interrupted saves leave behind: hidden ".step_NNNNNN.tmp-*" and ".step_NNNNNN.old-*" directories and
    /// ".latest.tmp-*" files. Call it when a run starts, before any save of its own (a save in progress in another process
    /// writing to the same store would lose its temporary directory). Returns the removed paths.
    /// </summary>
    public IReadOnlyList<string> RemoveLeftovers()
    {
        if (!System.IO.Directory.Exists(Root)) return [];
        var removed = new List<string>();
        foreach (var dir in System.IO.Directory.EnumerateDirectories(Root, ".step_*"))
        {
            var name = Path.GetFileName(dir);
            if (!name.Contains(".tmp-", StringComparison.Ordinal) && !name.Contains(".old-", StringComparison.Ordinal)) continue;
            System.IO.Directory.Delete(dir, recursive: true);
            removed.Add(dir);
        }
        foreach (var file in System.IO.Directory.EnumerateFiles(Root, ".latest.tmp-*"))
        {
            File.Delete(file);
            removed.Add(file);
        }
        return removed;
    }

    /// <summary>
    /// Keeps the newest <paramref name="keepLast"/> complete checkpoints and deletes the older ones, oldest first. The
    /// checkpoint named by "latest" is never deleted, whatever its age. Returns the removed directories.
    /// </summary>
    public IReadOnlyList<string> Prune(int keepLast)
    {
        if (keepLast < 1) throw new ArgumentOutOfRangeException(nameof(keepLast), $"checkpoints to keep ({keepLast}) must be at least 1");
        var all = Checkpoints();
        string? latest = Latest();
        var removed = new List<string>();
        foreach (var (_, dir) in all.Take(Math.Max(0, all.Count - keepLast)))
        {
            if (string.Equals(dir, latest, StringComparison.Ordinal)) continue;
            // Renamed aside first (atomic), then deleted: a crash mid-delete leaves a hidden ".old" directory that
            // RemoveLeftovers clears, never a step directory with some files missing.
            string aside = Path.Combine(Root, $".{Path.GetFileName(dir)}.old-{Guid.NewGuid():N}");
            System.IO.Directory.Move(dir, aside);
            System.IO.Directory.Delete(aside, recursive: true);
            removed.Add(dir);
        }
        return removed;
    }

    private static void FlushToDisk(string file)
    {
        using var s = new FileStream(file, FileMode.Open, FileAccess.ReadWrite, FileShare.Read);
        s.Flush(flushToDisk: true);
    }
}
