using Tessera.Training.Data;

namespace Tessera.Tests.Cuda.Training;

/// <summary>
/// Training tokens for the loss-curve tests: a noisy affine chain over the vocabulary, next = (5 * previous + 17 + noise) mod V
/// with noise in {0, 1, 2, 3}, so the loss falls from ln V towards ln 4 = 1.39 and never nears zero, where relative
/// differences would mean nothing.
/// </summary>
internal static class AffineChainTokens
{
    /// <summary><paramref name="count"/> tokens of the chain over <paramref name="vocab"/> ids, from <paramref name="seed"/>.</summary>
    public static int[] Generate(int count, int vocab, int seed)
    {
        var rng = new Random(seed);
        var tokens = new int[count];
        tokens[0] = rng.Next(vocab);
        for (int i = 1; i < count; i++) tokens[i] = (5 * tokens[i - 1] + 17 + rng.Next(4)) % vocab;
        return tokens;
    }

    /// <summary>Writes <see cref="Generate"/>'s tokens as the shard train.bin in <paramref name="dir"/>; returns its path.</summary>
    public static string WriteShard(string dir, int count, int vocab, int seed)
    {
        var path = Path.Combine(dir, "train.bin");
        TokenShard.Write(path, Generate(count, vocab, seed));
        return path;
    }
}
