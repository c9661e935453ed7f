namespace Tessera.Distributed.Launch;

/// <summary>The ranks could not meet: the master was unreachable, a rank did not arrive, or the ranks disagree (world size, duplicate rank).</summary>
public sealed class RendezvousException : Exception
{
    /// <summary>Creates the exception with a message naming what went wrong and where.</summary>
    public RendezvousException(string message, Exception? inner = null) : base(message, inner) { }
}
