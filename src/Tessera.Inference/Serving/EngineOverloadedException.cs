namespace Tessera.Inference.Serving;

/// <summary>The waiting queue is full (HTTP 429); try again after <see cref="RetryAfter"/>.</summary>
public sealed class EngineOverloadedException : Exception
{
    /// <summary>Creates the exception.</summary>
    public EngineOverloadedException(int waiting, TimeSpan retryAfter)
        : base($"the server is busy: {waiting} requests are already waiting; retry after {Math.Ceiling(retryAfter.TotalSeconds)} s")
    {
        RetryAfter = retryAfter;
    }

    /// <summary>A suggested wait before retrying.</summary>
    public TimeSpan RetryAfter { get; }
}
