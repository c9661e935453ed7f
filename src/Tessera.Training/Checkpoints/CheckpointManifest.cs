using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Tessera.Training.Checkpoints;

/// <summary>
/// manifest.json of a checkpoint directory: every file with its size and SHA-256. Written last,
/// so a directory without a valid manifest is never taken for a checkpoint.
/// </summary>
public sealed record CheckpointManifest
{
    /// <summary>Manifest format version.</summary>
    public const int CurrentFormat = 1;

    /// <summary>Format version of this manifest.</summary>
    [JsonPropertyName("format")] public int Format { get; init; } = CurrentFormat;

    /// <summary>Files of the checkpoint: relative name to size and hash.</summary>
    [JsonPropertyName("files")] public Dictionary<string, CheckpointFileEntry> Files { get; init; } = new(StringComparer.Ordinal);

    /// <summary>Computes the entry of one file.</summary>
    public static CheckpointFileEntry Describe(string path)
    {
        using var stream = File.OpenRead(path);
        var hash = SHA256.HashData(stream);
        return new CheckpointFileEntry(new FileInfo(path).Length, Convert.ToHexStringLower(hash));
    }

    /// <summary>Checks that every listed file exists with its size and hash; throws naming the first that does not.</summary>
    public void Verify(string directory)
    {
        foreach (var (name, entry) in Files)
        {
            var path = Path.Combine(directory, name);
            if (!File.Exists(path)) throw new CheckpointException($"{path}: missing (listed in the checkpoint's manifest.json)");
            var actual = Describe(path);
            if (actual.Bytes != entry.Bytes)
                throw new CheckpointException($"{path}: {actual.Bytes} bytes but manifest.json says {entry.Bytes}; the checkpoint is corrupt");
            if (!string.Equals(actual.Sha256, entry.Sha256, StringComparison.Ordinal))
                throw new CheckpointException($"{path}: SHA-256 {actual.Sha256} does not match manifest.json ({entry.Sha256}); the checkpoint is corrupt");
        }
    }

    /// <summary>Reads and parses manifest.json of <paramref name="directory"/>.</summary>
    public static CheckpointManifest Read(string directory)
    {
        var path = Path.Combine(directory, "manifest.json");
        if (!File.Exists(path)) throw new CheckpointException($"{path}: missing; {directory} is not a complete checkpoint");
        try
        {
            var m = JsonSerializer.Deserialize<CheckpointManifest>(File.ReadAllText(path))
                ?? throw new CheckpointException($"{path}: empty manifest");
            if (m.Format != CurrentFormat) throw new CheckpointException($"{path}: manifest format {m.Format}, this build reads {CurrentFormat}");
            return m;
        }
        catch (JsonException e) { throw new CheckpointException($"{path}: not valid JSON ({e.Message})", e); }
    }
}
