namespace Tessera.Training.Pipeline;

/// <summary>
/// One action of a rank's pipeline schedule. Compute actions name the virtual stage they run and the micro-batch; a
/// communication action names the message by the virtual stage on this rank it belongs to and the micro-batch: a
/// <see cref="PipelineActionKind.SendActivation"/> of (s, m) carries virtual stage s's output to the rank of s + 1, which
/// receives it as its <see cref="PipelineActionKind.ReceiveActivation"/> of (s + 1, m); a
/// <see cref="PipelineActionKind.SendGradient"/> of (s, m) carries the gradient of s's input to the rank of s - 1, which
/// receives it as its <see cref="PipelineActionKind.ReceiveGradient"/> of (s - 1, m). Consecutive communication actions of a
/// rank's list are issued together as one batch (one NCCL group).
/// </summary>
/// <param name="Kind">What the action does.</param>
/// <param name="VirtualStage">The virtual stage on this rank the action belongs to (0 .. p v - 1); 0 for the optimizer step.</param>
/// <param name="MicroBatch">The micro-batch (0 .. m - 1); 0 for the optimizer step.</param>
public readonly record struct PipelineAction(PipelineActionKind Kind, int VirtualStage, int MicroBatch)
{
    /// <summary>Whether the action computes (a forward or backward pass).</summary>
    public bool IsCompute => Kind is PipelineActionKind.Forward or PipelineActionKind.Backward;

    /// <summary>Whether the action sends or receives a message.</summary>
    public bool IsCommunication => Kind is PipelineActionKind.SendActivation or PipelineActionKind.ReceiveActivation
        or PipelineActionKind.SendGradient or PipelineActionKind.ReceiveGradient;

    /// <summary>Whether the action sends.</summary>
    public bool IsSend => Kind is PipelineActionKind.SendActivation or PipelineActionKind.SendGradient;

    /// <summary>The forward of micro-batch <paramref name="microBatch"/> on <paramref name="virtualStage"/>.</summary>
    public static PipelineAction Forward(int virtualStage, int microBatch) => new(PipelineActionKind.Forward, virtualStage, microBatch);

    /// <summary>The backward of micro-batch <paramref name="microBatch"/> on <paramref name="virtualStage"/>.</summary>
    public static PipelineAction Backward(int virtualStage, int microBatch) => new(PipelineActionKind.Backward, virtualStage, microBatch);

    /// <summary>The end of the step.</summary>
    public static PipelineAction OptimizerStep { get; } = new(PipelineActionKind.OptimizerStep, 0, 0);

    /// <summary>The virtual stage whose rank is at the other end of a communication action.</summary>
    public int PeerVirtualStage => Kind switch
    {
        PipelineActionKind.SendActivation or PipelineActionKind.ReceiveGradient => VirtualStage + 1,
        PipelineActionKind.ReceiveActivation or PipelineActionKind.SendGradient => VirtualStage - 1,
        _ => throw new InvalidOperationException($"{this} is not a communication action"),
    };

    /// <summary>The action at the other end of a communication action (the matching receive of a send, and the reverse).</summary>
    public PipelineAction Counterpart => Kind switch
    {
        PipelineActionKind.SendActivation => new(PipelineActionKind.ReceiveActivation, VirtualStage + 1, MicroBatch),
        PipelineActionKind.ReceiveActivation => new(PipelineActionKind.SendActivation, VirtualStage - 1, MicroBatch),
        PipelineActionKind.SendGradient => new(PipelineActionKind.ReceiveGradient, VirtualStage - 1, MicroBatch),
        PipelineActionKind.ReceiveGradient => new(PipelineActionKind.SendGradient, VirtualStage + 1, MicroBatch),
        _ => throw new InvalidOperationException($"{this} is not a communication action"),
    };

    /// <summary>Words for messages: "the forward of micro-batch 3 on virtual stage 5", "receiving the activation of micro-batch 2 for virtual stage 1".</summary>
    public string Describe() => Kind switch
    {
        PipelineActionKind.Forward => $"the forward of micro-batch {MicroBatch} on virtual stage {VirtualStage}",
        PipelineActionKind.Backward => $"the backward of micro-batch {MicroBatch} on virtual stage {VirtualStage}",
        PipelineActionKind.SendActivation => $"sending virtual stage {VirtualStage}'s activation of micro-batch {MicroBatch}",
        PipelineActionKind.ReceiveActivation => $"receiving the activation of micro-batch {MicroBatch} for virtual stage {VirtualStage}",
        PipelineActionKind.SendGradient => $"sending virtual stage {VirtualStage}'s input gradient of micro-batch {MicroBatch}",
        PipelineActionKind.ReceiveGradient => $"receiving the output gradient of micro-batch {MicroBatch} for virtual stage {VirtualStage}",
        _ => "the optimizer step",
    };

    /// <summary>Compact form: F3@1 (forward of micro-batch 3 on virtual stage 1), B3@1, SA3@1, RA3@1, SG3@1, RG3@1, STEP.</summary>
    public override string ToString() => Kind switch
    {
        PipelineActionKind.Forward => $"F{MicroBatch}@{VirtualStage}",
        PipelineActionKind.Backward => $"B{MicroBatch}@{VirtualStage}",
        PipelineActionKind.SendActivation => $"SA{MicroBatch}@{VirtualStage}",
        PipelineActionKind.ReceiveActivation => $"RA{MicroBatch}@{VirtualStage}",
        PipelineActionKind.SendGradient => $"SG{MicroBatch}@{VirtualStage}",
        PipelineActionKind.ReceiveGradient => $"RG{MicroBatch}@{VirtualStage}",
        _ => "STEP",
    };
}
