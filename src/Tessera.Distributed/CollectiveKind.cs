namespace Tessera.Distributed;

/// <summary>The communication operations a <see cref="ProcessGroup"/> issues.</summary>
public enum CollectiveKind
{
    /// <summary>Every rank ends with the reduction of every rank's tensor.</summary>
    AllReduce,
    /// <summary>Rank r ends with chunk r of the reduction of every rank's (Size * n) tensor.</summary>
    ReduceScatter,
    /// <summary>Every rank ends with the concatenation of every rank's tensor, in rank order.</summary>
    AllGather,
    /// <summary>Every rank ends with the root's tensor.</summary>
    Broadcast,
    /// <summary>Every rank waits until every rank has arrived.</summary>
    Barrier,
    /// <summary>Point-to-point: this rank's tensor goes to one peer.</summary>
    Send,
    /// <summary>Point-to-point: this rank's tensor is filled from one peer.</summary>
    Recv,
    /// <summary>Every rank sends a block of rows to every rank (its own included) and receives one from each, of per-peer sizes.</summary>
    AllToAll,
}
