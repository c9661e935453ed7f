namespace Tessera.Distributed.Nccl;

/// <summary>An NCCL call failed, or libnccl.so.2 could not be loaded. The message names the call and NCCL's error text.</summary>
public sealed class NcclException : Exception
{
    /// <summary>Creates the exception with a message that says what failed and what to do.</summary>
    public NcclException(string message) : base(message) { }
}
