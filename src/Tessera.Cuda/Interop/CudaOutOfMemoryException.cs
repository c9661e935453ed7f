namespace Tessera.Cuda.Interop;

/// <summary>A device allocation failed for lack of memory; the message gives the request and the allocator's statistics.</summary>
public sealed class CudaOutOfMemoryException : Exception
{
    /// <summary>Creates the exception.</summary>
    public CudaOutOfMemoryException(string message, Exception? inner = null) : base(message, inner) { }
}
