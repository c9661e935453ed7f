namespace Tessera.Training.Data;

/// <summary>
/// Checks token shards against a model's vocabulary before training starts, so that data tokenized for another vocabulary
/// is refused up front naming the shard and the offset, not found at some later step by the trainer's batch check.
/// </summary>
public static class VocabularyCheck
{
    /// <summary>
    /// Throws <see cref="InvalidDataException"/> naming the first token id at or above <paramref name="vocabularySize"/>:
    /// its shard, its offset in the shard and its value. Reads every shard once.
    /// </summary>
    public static void Ensure(IEnumerable<string> shards, int vocabularySize)
    {
        ArgumentNullException.ThrowIfNull(shards);
        foreach (var shard in shards)
        {
            var tokens = TokenShard.ReadTokens(shard);
            for (long i = 0; i < tokens.Length; i++)
                if (tokens[i] >= vocabularySize)
                    throw new InvalidDataException(
                        $"{shard}: token {tokens[i]} at offset {i} is outside the model's vocabulary of {vocabularySize}; the data was tokenized for another vocabulary (or the wrong --model was given)");
        }
    }
}
