namespace Tessera.Training.Data;

/// <summary>Splits a token stream into a validation shard and training shards.</summary>
public static class ShardWriter
{
    /// <summary>
    /// Writes the last <paramref name="validationFraction"/> of <paramref name="tokens"/> to
    /// DIR/val_000.bin and the rest to DIR/train_NNN.bin shards of at most <paramref name="shardTokens"/>
    /// tokens, in <paramref name="format"/> (uint16 by default; uint32 for vocabularies above 65,536). Returns each written
    /// path with its token count.
    /// </summary>
    public static List<(string Path, int Count)> WriteSplit(IReadOnlyList<int> tokens, string directory, double validationFraction, int shardTokens,
        TokenShardFormat format = TokenShardFormat.Uint16)
    {
        if (validationFraction is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(validationFraction), $"validation fraction {validationFraction} must lie in [0, 1)");
        Directory.CreateDirectory(directory);
        var all = tokens as int[] ?? tokens.ToArray();
        int valCount = (int)(all.Length * validationFraction);
        int trainCount = all.Length - valCount;
        var written = new List<(string, int)>();
        for (int start = 0, index = 0; start < trainCount; start += shardTokens, index++)
        {
            int n = Math.Min(shardTokens, trainCount - start);
            var path = Path.Combine(directory, $"train_{index:D3}.bin");
            TokenShard.Write(path, all.AsSpan(start, n), format);
            written.Add((path, n));
        }
        if (valCount > 0)
        {
            var path = Path.Combine(directory, "val_000.bin");
            TokenShard.Write(path, all.AsSpan(trainCount, valCount), format);
            written.Add((path, valCount));
        }
        return written;
    }

    /// <summary>Shards matching a path or a glob in the file name ("data/train_*.bin"), sorted.</summary>
    public static List<string> Expand(string pattern)
    {
        if (File.Exists(pattern)) return [Path.GetFullPath(pattern)];
        var dir = Path.GetDirectoryName(pattern);
        if (string.IsNullOrEmpty(dir)) dir = ".";
        var name = Path.GetFileName(pattern);
        if (Directory.Exists(pattern)) { dir = pattern; name = "*.bin"; }
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"{pattern}: directory {dir} does not exist");
        var files = Directory.GetFiles(dir, name).Order(StringComparer.Ordinal).ToList();
        if (files.Count == 0) throw new FileNotFoundException($"{pattern}: no token shards match");
        return files;
    }
}
