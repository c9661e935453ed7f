namespace Tessera.Cuda.Interop;

/// <summary>No usable CUDA: a library is missing, there is no driver, or no GPU. The message says what to do.</summary>
public sealed class CudaUnavailableException : Exception
{
    /// <summary>Creates the exception with a message that names what is missing.</summary>
    public CudaUnavailableException(string message, Exception? inner = null) : base(message, inner) { }
}
