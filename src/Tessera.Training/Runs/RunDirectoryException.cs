namespace Tessera.Training.Runs;

/// <summary>A run directory cannot be used as asked (it holds another run, or none to resume); the message says what to do.</summary>
public sealed class RunDirectoryException(string message) : Exception(message);
