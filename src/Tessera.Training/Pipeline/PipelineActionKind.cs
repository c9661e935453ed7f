namespace Tessera.Training.Pipeline;

/// <summary>What one action of a pipeline schedule does on its rank.</summary>
public enum PipelineActionKind
{
    /// <summary>The forward pass of one micro-batch through one virtual stage's units.</summary>
    Forward,

    /// <summary>The backward pass of one micro-batch through one virtual stage's units (after its forward).</summary>
    Backward,

    /// <summary>Sends a virtual stage's output activation of a micro-batch to the rank of the next virtual stage.</summary>
    SendActivation,

    /// <summary>Receives a virtual stage's input activation of a micro-batch from the rank of the previous virtual stage.</summary>
    ReceiveActivation,

    /// <summary>Sends the gradient of a virtual stage's input for a micro-batch to the rank of the previous virtual stage.</summary>
    SendGradient,

    /// <summary>Receives the gradient of a virtual stage's output for a micro-batch from the rank of the next virtual stage.</summary>
    ReceiveGradient,

    /// <summary>The end of a training step's schedule: the gradients are complete and the optimizer updates.</summary>
    OptimizerStep,
}
