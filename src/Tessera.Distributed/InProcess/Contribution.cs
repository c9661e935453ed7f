using Tessera.Tensors;

namespace Tessera.Distributed.InProcess;

/// <summary>
/// What one rank brought to a pending in-process operation: its group rank, the call and its tensors, when it arrived, and
/// what its group's <see cref="InProcessTransport"/> noted on the rank's own thread as it issued the call
/// (<see cref="InProcessTransport.Issue"/>; e.g. an event marking the end of the rank's compute so far).
/// </summary>
/// <param name="Rank">Group rank.</param>
/// <param name="Kind">The operation the rank issued.</param>
/// <param name="Input">What the rank sends or reduces (null for Recv and Barrier).</param>
/// <param name="Output">Where the rank receives (null for Send and Barrier; the input itself for in-place operations).</param>
/// <param name="Op">The reduction (AllReduce, ReduceScatter).</param>
/// <param name="Root">The root's group rank (Broadcast).</param>
/// <param name="ArrivedAtMs">Environment.TickCount64 when the rank issued it.</param>
/// <param name="Token">The transport's note from <see cref="InProcessTransport.Issue"/>, disposed once the operation has executed or failed.</param>
/// <param name="InputSplits">AllToAll: rows sent to each group rank; null otherwise.</param>
/// <param name="OutputSplits">AllToAll: rows received from each group rank; null otherwise.</param>
public sealed record Contribution(int Rank, CollectiveKind Kind, Tensor? Input, Tensor? Output, ReduceOp Op, int Root, long ArrivedAtMs,
    IDisposable? Token = null, IReadOnlyList<int>? InputSplits = null, IReadOnlyList<int>? OutputSplits = null)
{
    /// <summary>"AllReduce(F32, 1024 elements, Sum)": how mismatch messages show a call.</summary>
    public string Describe()
    {
        var t = Input ?? Output;
        string what = t is null ? "" : $"{t.DType}, {t.NumElements} elements";
        return Kind switch
        {
            CollectiveKind.AllReduce => $"AllReduce({what}, {Op})",
            CollectiveKind.ReduceScatter => $"ReduceScatter({what} -> {Output!.NumElements}, {Op})",
            CollectiveKind.AllGather => $"AllGather({what} -> {Output!.NumElements})",
            CollectiveKind.Broadcast => $"Broadcast({what}, root {Root})",
            CollectiveKind.AllToAll => $"AllToAll({Input!.DType}, rows of {ProcessGroup.RowElements(Input)}, sends [{string.Join(", ", InputSplits!)}], receives [{string.Join(", ", OutputSplits!)}])",
            _ => $"{Kind}({what})",
        };
    }
}
