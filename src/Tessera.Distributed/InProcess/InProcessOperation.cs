namespace Tessera.Distributed.InProcess;

/// <summary>
/// An in-process operation every participant has arrived at, as its transport sees it (<see cref="InProcessTransport.Execute"/>):
/// the group, the operation's number and label, and the participants' contributions in group-rank order (for a message,
/// the sender's then the receiver's).
/// </summary>
public sealed class InProcessOperation
{
    internal InProcessOperation(string groupName, IReadOnlyList<int> globalRanks, string label, CollectiveKind kind, long sequenceNumber,
        IReadOnlyList<Contribution> contributions)
    {
        GroupName = groupName;
        GlobalRanks = globalRanks;
        Label = label;
        Kind = kind;
        SequenceNumber = sequenceNumber;
        Contributions = contributions;
    }

    /// <summary>The group's name ("world", "tp", ...).</summary>
    public string GroupName { get; }

    /// <summary>The world rank of each group rank (index = group rank).</summary>
    public IReadOnlyList<int> GlobalRanks { get; }

    /// <summary>Number of ranks in the group (a message has two participants of a group of any size).</summary>
    public int GroupSize => GlobalRanks.Count;

    /// <summary>"AllReduce #3" or "Send #2 (rank 0 -> rank 1)".</summary>
    public string Label { get; }

    /// <summary>The operation (the kind the first participant issued; Send or Recv for a message).</summary>
    public CollectiveKind Kind { get; }

    /// <summary>The collective's number in its group, or the message's number between its two ranks.</summary>
    public long SequenceNumber { get; }

    /// <summary>The participants' calls, in group-rank order.</summary>
    public IReadOnlyList<Contribution> Contributions { get; }

    /// <summary>Throws <see cref="CollectiveMismatchException"/> when the participants' calls do not match.</summary>
    internal void CheckMatch()
    {
        var cs = Contributions;
        if (Kind is CollectiveKind.Send or CollectiveKind.Recv)
        {
            var send = cs.FirstOrDefault(c => c.Kind == CollectiveKind.Send);
            var recv = cs.FirstOrDefault(c => c.Kind == CollectiveKind.Recv);
            if (send is null || recv is null || send.Input!.DType != recv.Output!.DType || send.Input.NumElements != recv.Output.NumElements)
                throw new CollectiveMismatchException(
                    $"{Label} in group '{GroupName}' does not match: {string.Join(", ", cs.Select(c => $"rank {c.Rank} issued {c.Describe()}"))}; " +
                    "a Send and its Recv need the same dtype and element count");
            return;
        }
        if (Kind == CollectiveKind.AllToAll)
        {
            CheckAllToAll();
            return;
        }
        var reference = cs[0].Describe();
        if (cs.All(c => c.Describe() == reference)) return;
        throw new CollectiveMismatchException(
            $"collective #{SequenceNumber} in group '{GroupName}' does not match across ranks: " +
            string.Join(", ", cs.Select(c => $"rank {c.Rank} issued {c.Describe()}")) +
            "; every rank must issue the same collectives, with the same dtype, sizes and arguments, in the same order");
    }

    /// <summary>An all-to-all matches when every rank issued one, of one dtype and row size, and rank s sends rank d what d receives from s.</summary>
    private void CheckAllToAll()
    {
        var cs = Contributions;
        var first = cs[0];
        string Issued() => string.Join(", ", cs.Select(c => $"rank {c.Rank} issued {c.Describe()}"));
        if (cs.Any(c => c.Kind != CollectiveKind.AllToAll || c.Input!.DType != first.Input!.DType ||
                        ProcessGroup.RowElements(c.Input) != ProcessGroup.RowElements(first.Input)))
            throw new CollectiveMismatchException($"collective #{SequenceNumber} in group '{GroupName}' does not match across ranks: {Issued()}; " +
                "every rank must issue the same collectives, an all-to-all of the same dtype and row size, in the same order");
        foreach (var s in cs)
            foreach (var d in cs)
                if (s.InputSplits![d.Rank] != d.OutputSplits![s.Rank])
                    throw new CollectiveMismatchException($"AllToAll #{SequenceNumber} in group '{GroupName}': rank {s.Rank} sends rank {d.Rank} {s.InputSplits[d.Rank]} rows " +
                        $"but rank {d.Rank} expects {d.OutputSplits[s.Rank]} from it ({Issued()}); exchange the split sizes first");
    }
}
