namespace Tessera.Inference.Scheduling;

/// <summary>One sequence's share of a step: its tokens [Start, Start + Count) are computed.</summary>
/// <param name="Sequence">The sequence.</param>
/// <param name="Start">First token computed (its position).</param>
/// <param name="Count">Tokens computed.</param>
public readonly record struct ScheduledSequence(Sequence Sequence, int Start, int Count)
{
    /// <summary>Whether the step computes the sequence's last token (at scheduling time), so its output is sampled.</summary>
    public bool Samples { get; } = Start + Count == Sequence.Tokens.Count;

    /// <summary>Of the <see cref="Count"/> tokens, the trailing draft tokens the step verifies (speculative decoding; 0
    /// otherwise). Their rows and the row before them are all sampled: <see cref="SampledRows"/>.</summary>
    public int Drafts { get; init; }

    /// <summary>Rows of the sequence whose outputs are sampled: the last one, and with drafts the row of each draft's
    /// predecessor too (1 + <see cref="Drafts"/>); 0 when the step ends inside the prompt.</summary>
    public int SampledRows => Samples ? 1 + Drafts : 0;
}

/// <summary>What one engine step runs: the decoding sequences first, then prefill chunks of running sequences (both in arrival order), then newly admitted ones.</summary>
public sealed class ScheduledStep
{
    /// <summary>The sequences and their token ranges, in batch order.</summary>
    public List<ScheduledSequence> Sequences { get; } = new();

    /// <summary>Sequences preempted to make room in this step (now waiting, their blocks released).</summary>
    public List<Sequence> Preempted { get; } = new();

    /// <summary>Tokens computed in the step.</summary>
    public int Tokens { get; internal set; }

    /// <summary>Rows sampled over all sequences (<see cref="ScheduledSequence.SampledRows"/>).</summary>
    public int SampledRows => Sequences.Sum(s => s.SampledRows);

    /// <summary>Whether every sequence computes exactly one token (a pure decode step, which may replay a recorded graph).</summary>
    public bool IsDecodeOnly => Sequences.Count > 0 && Tokens == Sequences.Count;

    /// <summary>Whether nothing is scheduled.</summary>
    public bool IsEmpty => Sequences.Count == 0;
}
