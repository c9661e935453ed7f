using Tessera.Tensors;

namespace Tessera.Cuda;

// Sampling on the device (sampling.cu; sampling_cluster.cu, a row over a cluster): a row of logits becomes a token id without leaving the GPU.
public sealed unsafe partial class CudaBackend
{
    /// <summary>Threads of <c>sample_rows</c>'s CTA (one a row): the row's passes are grid-stride loops over its columns.</summary>
    private const int SamplingThreads = 1024;

    /// <summary>Threads of each CTA of <c>sample_rows_cluster</c> (a row over a cluster of CTAs).</summary>
    private const int SamplingClusterThreads = 512;

    /// <summary>
    /// CTAs of the cluster that shares a row of <see cref="SampleRows"/> for <paramref name="rows"/> rows of
    /// <paramref name="columns"/> logits, or 0 for the one-CTA-a-row kernel: <see cref="CudaBackendOptions.SamplingClusterCtas"/>
    /// where set, else <see cref="SamplingKernelShape"/> on compute capability 9.0 and later.
    /// </summary>
    private int SamplingCtas(int rows, int columns, bool temperatureOnly) =>
        CudaDevice.ComputeCapability.Major < 9 ? 0
            : Options.SamplingClusterCtas ?? SamplingKernelShape(rows, columns, temperatureOnly, CudaDevice.MultiprocessorCount);

    /// <summary>
    /// Rows from which a call of temperature alone (<see cref="SampleRows"/>'s temperatureOnly) takes the one-CTA kernel when
    /// the options leave the choice open. Without a filter a row is two passes, the argmax and the Gumbel draw, bound by the
    /// noise's hashes and logarithms; the one-CTA kernel's time stays at one row's while the rows fit one to an SM (114 and
    /// 117 us for 1 and 64 rows of 128,256 BF16 logits on the H100's 132 SMs), where the cluster kernel's grows with the
    /// rows (36, 99, 314 us at 1, 64, 256 rows): the cluster is 15 % faster at 64 rows and 14 % slower at 256 (against 277 us;
    /// docs/benchmarks.md, session 31). 128 rows, one CTA a row still fitting the SMs once, is where the two should meet; it
    /// is not timed yet (CudaSamplingSpeedReport has the row).
    /// </summary>
    internal const int SamplingOneCtaRows = 128;

    /// <summary>
    /// The automatic choice: 0 (one CTA a row) for a call of temperature alone of at least <see cref="SamplingOneCtaRows"/>
    /// rows, else <see cref="SamplingClusterShape"/>'s CTAs a row.
    /// </summary>
    internal static int SamplingKernelShape(int rows, int columns, bool temperatureOnly, int multiprocessors) =>
        temperatureOnly && rows >= SamplingOneCtaRows ? 0 : SamplingClusterShape(rows, columns, multiprocessors);

    /// <summary>
    /// The fewest CTAs a row, a power of two up to 8, that give <paramref name="rows"/> rows two CTAs for each of
    /// <paramref name="multiprocessors"/> SMs, while each CTA keeps at least 2,048 of the row's <paramref name="columns"/>
    /// logits (64 rows of 128,256 on 132 SMs: 8; 256 rows: 2; one row of 1,000: 1).
    /// </summary>
    internal static int SamplingClusterShape(int rows, int columns, int multiprocessors)
    {
        int ctas = 1;
        while (ctas < 8 && (long)rows * ctas < 2L * multiprocessors && columns / (2 * ctas) >= 2048) ctas *= 2;
        return ctas;
    }

    /// <summary>Refuses anything but rows (M, V) with a contiguous last dimension (a row-strided view is accepted).</summary>
    private static void RequireRows(string op, string name, Tensor t)
    {
        if (t.Rank != 2 || (t.Stride(1) != 1 && t.Size(1) > 1))
            throw new ArgumentException($"CudaBackend.{op}: {name} must be (M, V) with a contiguous last dimension, got {t.Shape}");
    }

    public void SampleRows(Tensor logits, Tensor parameters, Tensor positions, Tensor ids, bool temperatureOnly = false)
    {
        const string op = nameof(SampleRows);
        ArgumentNullException.ThrowIfNull(logits); ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(positions); ArgumentNullException.ThrowIfNull(ids);
        RequireRows(op, "logits", logits);
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
        int ctas = SamplingCtas(m, v, temperatureOnly);
        if (ctas > 0)
        {
            // A row over a cluster of CTAs (sampling_cluster.cu, sample_rows_cluster): the clusters walk the rows.
            void** cargs = stackalloc void*[] { &px, &ld, &v, &m, &pp, &pq, &pi };
            LaunchCluster("sampling_cluster.cu", "sample_rows_cluster_" + Suffix(logits.DType, op), m, (uint)ctas, SamplingClusterThreads, cargs);
            return;
        }
        void** args = stackalloc void*[] { &px, &ld, &v, &pp, &pq, &pi };
        Launch("sampling.cu", "sample_rows_" + Suffix(logits.DType, op), (uint)m, SamplingThreads, args);
    }

    public void TokenLogprobs(Tensor logits, Tensor ids, int count, Tensor logprobs, Tensor? topIds)
    {
        const string op = nameof(TokenLogprobs);
        ArgumentNullException.ThrowIfNull(logits); ArgumentNullException.ThrowIfNull(ids); ArgumentNullException.ThrowIfNull(logprobs);
        RequireRows(op, "logits", logits);
        int m = logits.Size(0), v = logits.Size(1);
        if (count < 0 || count > v) throw new ArgumentOutOfRangeException(nameof(count), count, $"CudaBackend.{op}: count must lie in [0, {v}], the row's columns");
        RequireDType(op, "ids", ids, DType.I32);
        RequireContiguous(op, "ids", ids);
        if (ids.NumElements != m) throw new ArgumentException($"CudaBackend.{op}: ids {ids.Shape} must hold one id per row of logits {logits.Shape}");
        RequireDType(op, "logprobs", logprobs, DType.F32);
        RequireContiguous(op, "logprobs", logprobs);
        if (logprobs.Rank != 2 || logprobs.Size(0) != m || logprobs.Size(1) != 1 + count)
            throw new ArgumentException($"CudaBackend.{op}: logprobs must be ({m}, {1 + count}), got {logprobs.Shape}");
        if ((count > 0) != (topIds is not null)) throw new ArgumentException($"CudaBackend.{op}: topIds must be given exactly when count ({count}) is above 0");
        if (topIds is not null)
        {
            RequireDType(op, "topIds", topIds, DType.I32);
            RequireContiguous(op, "topIds", topIds);
            if (topIds.Rank != 2 || topIds.Size(0) != m || topIds.Size(1) != count)
                throw new ArgumentException($"CudaBackend.{op}: topIds must be ({m}, {count}), got {topIds.Shape}");
        }
        if (m == 0) return;
        ulong px = Ptr(logits), pi = Ptr(ids), pl = Ptr(logprobs), pt = topIds is null ? 0 : Ptr(topIds);
        long ld = logits.Stride(0);
        void** args = stackalloc void*[] { &px, &ld, &v, &pi, &count, &pl, &pt };
        Launch("sampling.cu", "token_logprobs_" + Suffix(logits.DType, op), (uint)m, SamplingThreads, args);
    }

    public void AddToColumns(Tensor x, Tensor starts, Tensor columns, Tensor values)
    {
        const string op = nameof(AddToColumns);
        ArgumentNullException.ThrowIfNull(x); ArgumentNullException.ThrowIfNull(starts);
        ArgumentNullException.ThrowIfNull(columns); ArgumentNullException.ThrowIfNull(values);
        RequireDType(op, "x", x, DType.F32);
        RequireRows(op, "x", x);
        int m = x.Size(0);
        RequireDType(op, "starts", starts, DType.I32);
        RequireContiguous(op, "starts", starts);
        if (starts.NumElements != m + 1) throw new ArgumentException($"CudaBackend.{op}: starts {starts.Shape} must hold {m + 1} offsets, one per row of x {x.Shape} and the end");
        RequireDType(op, "columns", columns, DType.I32);
        RequireContiguous(op, "columns", columns);
        RequireDType(op, "values", values, DType.F32);
        RequireContiguous(op, "values", values);
        if (m == 0) return;
        ulong px = Ptr(x), ps = Ptr(starts), pc = Ptr(columns), pv = Ptr(values);
        long ld = x.Stride(0);
        void** args = stackalloc void*[] { &px, &ld, &ps, &pc, &pv };
        Launch("sampling.cu", "add_to_columns", (uint)m, 256, args);
    }
}
