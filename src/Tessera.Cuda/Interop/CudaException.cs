namespace Tessera.Cuda.Interop;

/// <summary>A CUDA library call returned an error; the message names the call and CUDA's own name and text for the code.</summary>
public class CudaException : Exception
{
    /// <summary>Creates the exception for a failed call.</summary>
    public CudaException(string call, int code, string errorName, string errorText, string? context = null)
        : base($"{call} failed: {errorName} ({code}): {errorText}{(context is null ? "" : " [" + context + "]")}")
    {
        Call = call;
        Code = code;
        ErrorName = errorName;
    }

    /// <summary>The API function that failed, e.g. "cuMemAllocAsync".</summary>
    public string Call { get; }

    /// <summary>The library's status code.</summary>
    public int Code { get; }

    /// <summary>The library's name for the code, e.g. "CUDA_ERROR_OUT_OF_MEMORY".</summary>
    public string ErrorName { get; }
}
