namespace Tessera.Training.Checkpoints;

/// <summary>A checkpoint is missing, incomplete, corrupt or incompatible; the message names the file and the problem.</summary>
public sealed class CheckpointException(string message, Exception? inner = null) : Exception(message, inner);
