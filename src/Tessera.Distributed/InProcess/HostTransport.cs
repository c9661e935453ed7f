using Tessera.Tensors;

namespace Tessera.Distributed.InProcess;

/// <summary>
/// The default in-process transport: the last rank to arrive stages every tensor through pooled host buffers (CopyToHost /
/// CopyFromHost of each tensor's own backend) and reduces in rank order 0 .. Size-1, so every rank gets bit-identical
/// results equal to a sequential sum in that order. Works for tensors of any backend whose copies are safe from another
/// rank's thread (CPU backends); reduces F32, F64 and I32 (Average: F32, F64); moves every dtype. Results are in place
/// when the operation completes, so a device wait is the host wait.
/// </summary>
public sealed class HostTransport : InProcessTransport
{
    /// <inheritdoc/>
    public override bool CanReduce(DType dtype, ReduceOp op) =>
        dtype is DType.F32 or DType.F64 || (dtype is DType.I32 && op != ReduceOp.Average);

    /// <inheritdoc/>
    public override IDeviceEvent? Execute(InProcessOperation operation)
    {
        HostCollectives.Execute(operation.Contributions, operation.GroupSize);
        return null;
    }
}
