using Tessera.Tensors;

namespace Tessera.Distributed;

/// <summary>
/// One send or receive of a batch issued together by <see cref="ProcessGroup.SendReceive"/> (torch.distributed's P2POp).
/// </summary>
/// <param name="Kind"><see cref="CollectiveKind.Send"/> or <see cref="CollectiveKind.Recv"/>.</param>
/// <param name="Tensor">What is sent, or the buffer received into (contiguous; the same element count and dtype on both sides).</param>
/// <param name="Peer">The other rank, by its rank in the group.</param>
public readonly record struct PointToPoint(CollectiveKind Kind, Tensor Tensor, int Peer)
{
    /// <summary>A send of <paramref name="tensor"/> to group rank <paramref name="peer"/>.</summary>
    public static PointToPoint Send(Tensor tensor, int peer) => new(CollectiveKind.Send, tensor, peer);

    /// <summary>A receive into <paramref name="tensor"/> from group rank <paramref name="peer"/>.</summary>
    public static PointToPoint Receive(Tensor tensor, int peer) => new(CollectiveKind.Recv, tensor, peer);
}
