namespace Tessera.Training.Runs;

/// <summary>A checkpoint cannot be resumed with the settings given; the message lists every difference.</summary>
public sealed class ResumeMismatchException(string message) : Exception(message);
