using Tessera.Tensors;

namespace Tessera.Distributed.InProcess;

/// <summary>
/// How an in-process group moves and reduces the tensors once every participant of an operation has arrived. The group's
/// rendezvous owns everything else (sequence numbers, matching, mismatch errors, timeouts, aborts), so every transport gets
/// the same behaviour there. <see cref="HostTransport"/> (the default) stages through host memory with each tensor's own
/// backend; Tessera.Cuda's <c>CudaInProcessTransport</c> enqueues device copies and a reduction kernel ordered by events,
/// for thread ranks that share one GPU. One transport serves every group of an <see cref="InProcessWorld"/>.
/// </summary>
public abstract class InProcessTransport
{
    /// <summary>Which element types and reductions this transport reduces (AllReduce, ReduceScatter).</summary>
    public abstract bool CanReduce(DType dtype, ReduceOp op);

    /// <summary>
    /// Called on the issuing rank's own thread as it issues an operation, before it joins the rendezvous: notes what the
    /// execution will need of that rank's state at issue time (a device transport records an event at the end of the rank's
    /// compute stream, so the collective reads what was enqueued before it). The rendezvous disposes the note once the
    /// operation has executed, failed or been aborted. Default: nothing.
    /// </summary>
    public virtual IDisposable? Issue(int globalRank, CollectiveKind kind) => null;

    /// <summary>
    /// Executes <paramref name="operation"/> for every participant, on the thread of the last rank to arrive, after the
    /// rendezvous has checked that the participants' calls match. Returns null when the results are in place on return, or
    /// the device event after which they are (the operation's handles wait for it).
    /// </summary>
    public abstract IDeviceEvent? Execute(InProcessOperation operation);

    /// <summary>
    /// Makes the compute work that global rank <paramref name="globalRank"/> enqueues next wait for <paramref name="done"/>
    /// (an event from <see cref="Execute"/>), without blocking the host where the transport can (what
    /// <see cref="CollectiveHandle.WaitOnDevice"/> calls). Default: the host waits.
    /// </summary>
    public virtual void OrderComputeAfter(int globalRank, IDeviceEvent done) => done.Synchronize();
}
