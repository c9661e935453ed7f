using Tessera.Tensors;

namespace Tessera.Training;

/// <summary>Writes host values (F64, as initialization and loading produce them) into a tensor of any float dtype.</summary>
internal static class HostValues
{
    /// <summary>
    /// <paramref name="source"/> into <paramref name="destination"/>: F64 as is, F32 rounded, BF16 through the F32 rounding
    /// (as the device cast of the masters rounds them).
    /// </summary>
    public static void Write(IBackend backend, ReadOnlySpan<double> source, Tensor destination)
    {
        if (destination.DType == DType.F64) backend.CopyFromHost(source, destination);
        else if (destination.DType == DType.BF16)
        {
            var b = new BFloat16[source.Length];
            for (int i = 0; i < b.Length; i++) b[i] = BFloat16.FromSingle((float)source[i]);
            backend.CopyFromHost<BFloat16>(b, destination);
        }
        else
        {
            var f = new float[source.Length];
            for (int i = 0; i < f.Length; i++) f[i] = (float)source[i];
            backend.CopyFromHost<float>(f, destination);
        }
    }
}
