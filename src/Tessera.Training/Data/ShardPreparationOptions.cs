namespace Tessera.Training.Data;

/// <summary>How <see cref="ShardPreparation.Prepare"/> writes token shards.</summary>
public sealed record ShardPreparationOptions
{
    /// <summary>Directory that receives train_NNN.bin and val_000.bin; required.</summary>
    public required string OutputDirectory { get; init; }

    /// <summary>Fraction of the tokens (the last ones) written to val_000.bin, in [0, 1). Default 0.1.</summary>
    public double ValidationFraction { get; init; } = 0.1;

    /// <summary>Most tokens per training shard. Default 100,000,000 (llm.c's shard size).</summary>
    public int ShardTokens { get; init; } = 100_000_000;

    /// <summary>Token width, or null (the default) for the narrowest that holds the tokenizer's vocabulary.</summary>
    public TokenShardFormat? Format { get; init; }

    /// <summary>The string field of a jsonl line that holds the document. Default "text".</summary>
    public string TextField { get; init; } = "text";

    /// <summary>Checks the values; throws naming the first bad one.</summary>
    public ShardPreparationOptions Validate()
    {
        if (string.IsNullOrWhiteSpace(OutputDirectory)) throw new ArgumentException("ShardPreparationOptions: OutputDirectory is required");
        if (ValidationFraction is < 0 or >= 1 || double.IsNaN(ValidationFraction))
            throw new ArgumentException($"ShardPreparationOptions: ValidationFraction ({ValidationFraction}) must lie in [0, 1)");
        if (ShardTokens <= 0) throw new ArgumentException($"ShardPreparationOptions: ShardTokens ({ShardTokens}) must be positive");
        if (string.IsNullOrEmpty(TextField)) throw new ArgumentException("ShardPreparationOptions: TextField must name a field");
        return this;
    }
}
