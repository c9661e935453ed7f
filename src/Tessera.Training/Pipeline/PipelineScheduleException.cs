namespace Tessera.Training.Pipeline;

/// <summary>A pipeline schedule that would not run: a missing or duplicated action, a send without its receive, a deadlock.</summary>
public sealed class PipelineScheduleException(string message) : Exception(message);
