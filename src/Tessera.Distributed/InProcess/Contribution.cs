using Tessera.Tensors;

namespace Tessera.Distributed.InProcess;

/// <summary>What one rank brought to a pending operation.</summary>
internal sealed record Contribution(int Rank, CollectiveKind Kind, Tensor? Input, Tensor? Output, ReduceOp Op, int Root, long ArrivedAtMs)
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
            _ => $"{Kind}({what})",
        };
    }
}
