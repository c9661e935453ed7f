namespace Tessera.Distributed;

/// <summary>How <see cref="ProcessGroup.AllReduce"/> and <see cref="ProcessGroup.ReduceScatter"/> combine the ranks' elements.</summary>
public enum ReduceOp
{
    /// <summary>Sum over ranks, accumulated in rank order 0 .. Size-1.</summary>
    Sum,
    /// <summary>The sum divided by the group size (floating-point dtypes only).</summary>
    Average,
    /// <summary>Element-wise maximum over ranks (e.g. a "found inf" flag).</summary>
    Max,
}
