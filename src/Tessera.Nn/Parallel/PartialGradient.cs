using Tessera.Distributed;

namespace Tessera.Nn.Parallel;

/// <summary>
/// Elements [<paramref name="Start"/>, <paramref name="Start"/> + <paramref name="Length"/>) of <paramref name="Parameter"/>'s
/// local tensor whose gradient each rank of <paramref name="Group"/> computes only in part, so that it must be summed over
/// the group before the optimizer (or a data-parallel reduction) reads it: a norm's weight under sequence parallelism
/// (each rank saw its rows), the rows of key/value heads replicated over a tensor-parallel group wider than their count
/// (each replica saw its query heads).
/// </summary>
public sealed record PartialGradient(Parameter Parameter, long Start, long Length, ProcessGroup Group);
