using Tessera.Tensors;

namespace Tessera.Cuda;

// Sampling on the device (sampling.cu): a row of logits becomes a token id without leaving the GPU.
public sealed unsafe partial class CudaBackend
{
    /// <summary>Threads of <c>sample_rows</c>'s CTA (one a row): the row's passes are grid-stride loops over its columns.</summary>
    private const int SamplingThreads = 1024;

    public void SampleRows(Tensor logits, Tensor parameters, Tensor positions, Tensor ids)
    {
        const string op = nameof(SampleRows);
        ArgumentNullException.ThrowIfNull(logits); ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(positions); ArgumentNullException.ThrowIfNull(ids);
        if (logits.Rank != 2 || (logits.Stride(1) != 1 && logits.Size(1) > 1))
            throw new ArgumentException($"CudaBackend.{op}: logits must be (M, V) with a contiguous last dimension, got {logits.Shape}");
        int m = logits.Size(0), v = logits.Size(1);
        if (v == 0) throw new ArgumentException($"CudaBackend.{op}: logits {logits.Shape} has no columns");
        RequireDType(op, "parameters", parameters, DType.I32);
        RequireContiguous(op, "parameters", parameters);
        if (parameters.Rank != 2 || parameters.Size(0) != m || parameters.Size(1) != TokenSampling.ParameterColumns)
            throw new ArgumentException($"CudaBackend.{op}: parameters must be ({m}, {TokenSampling.ParameterColumns}), one row per row of logits, got {parameters.Shape}");
        foreach (var (name, t) in new[] { ("positions", positions), ("ids", ids) })
        {
            RequireDType(op, name, t, DType.I32);
            RequireContiguous(op, name, t);
            if (t.NumElements != m) throw new ArgumentException($"CudaBackend.{op}: {name} {t.Shape} must hold one value per row of logits {logits.Shape}");
        }
        if (m == 0) return;
        ulong px = Ptr(logits), pp = Ptr(parameters), pq = Ptr(positions), pi = Ptr(ids);
        long ld = logits.Stride(0);
        void** args = stackalloc void*[] { &px, &ld, &v, &pp, &pq, &pi };
        Launch("sampling.cu", "sample_rows_" + Suffix(logits.DType, op), (uint)m, SamplingThreads, args);
    }
}
