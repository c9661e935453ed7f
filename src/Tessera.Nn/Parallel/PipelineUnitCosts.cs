namespace Tessera.Nn.Parallel;

/// <summary>
/// The cost of each kind of model unit on one pipeline stage (measured times, or any consistent unit): what
/// <see cref="PipelinePartition.Balanced"/> balances. The vocabulary layers make the first and last stages heavier than a
/// block ("Balancing Pipeline Parallelism with Vocabulary Parallelism"), so those stages may be given fewer blocks.
/// </summary>
/// <param name="Embedding">Forward + backward of the token (and position) embedding, on the first virtual stage. Default 0.</param>
/// <param name="Block">Forward + backward of one decoder block. Must be positive. Default 1.</param>
/// <param name="Head">Forward + backward of the final norm, LM head and loss, on the last virtual stage. Default 0.</param>
public sealed record PipelineUnitCosts(double Embedding = 0, double Block = 1, double Head = 0)
{
    /// <summary>Blocks only (the vocabulary layers counted as free): an even split of the blocks.</summary>
    public static PipelineUnitCosts BlocksOnly { get; } = new();

    /// <summary>Throws, naming the field, when a cost is negative or not finite, or the block cost is not positive.</summary>
    public PipelineUnitCosts Validate()
    {
        if (!(Block > 0) || !double.IsFinite(Block)) throw new ArgumentException($"pipeline unit costs: Block ({Block}) must be positive and finite");
        if (!(Embedding >= 0) || !double.IsFinite(Embedding)) throw new ArgumentException($"pipeline unit costs: Embedding ({Embedding}) must be non-negative and finite");
        if (!(Head >= 0) || !double.IsFinite(Head)) throw new ArgumentException($"pipeline unit costs: Head ({Head}) must be non-negative and finite");
        return this;
    }
}
