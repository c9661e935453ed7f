using Tessera.Distributed;

namespace Tessera.Training.Pipeline;

/// <summary>
/// A pipeline stage waited past its group's timeout for a message: names the stage, the micro-batch, the virtual stage and the
/// operation, with the underlying <see cref="CollectiveTimeoutException"/> inside.
/// </summary>
public sealed class PipelineStallException(string message, Exception inner) : TimeoutException(message, inner);
