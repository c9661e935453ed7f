using Tessera.Tensors;

namespace Tessera.Cuda;

public sealed unsafe partial class CudaBackend
{
    public void CrossEntropy(Tensor logits, Tensor targets, Tensor losses, Tensor? dLogits, double lossScale)
    {
        const string op = "CrossEntropy";
        Suffix(logits.DType, op);
        RequireDType(op, "targets", targets, DType.I32);
        RequireDType(op, "losses", losses, DType.F32);
        RequireContiguous(op, "targets", targets);
        RequireContiguous(op, "losses", losses);
        int v = logits.Size(-1);
        long rows = logits.NumElements / Math.Max(v, 1);
        long xs = RowStride(op, "logits", logits);
        if (targets.NumElements != rows || losses.NumElements != rows)
            throw new ArgumentException($"CudaBackend.{op}: targets {targets.Shape} and losses {losses.Shape} must have {rows} elements for logits {logits.Shape}");
        long ds = 0;
        if (dLogits is not null)
        {
            RequireSameShape(op, logits, "logits", dLogits, "dLogits");
            RequireDType(op, "dLogits", dLogits, logits.DType);
            ds = RowStride(op, "dLogits", dLogits);
        }
        if (rows == 0) return;
        ulong px = Ptr(logits), pt = Ptr(targets), pl = Ptr(losses), pd = PtrOrNull(dLogits);
        long size = logits.DType.SizeInBytes();
        int aligned = px % 16 == 0 && pd % 16 == 0 && xs * size % 16 == 0 && ds * size % 16 == 0 ? 1 : 0;
        float scale = (float)lossScale;
        // The row's first vectors kept in shared memory between the two passes (softmax.cu), when there is a gradient pass;
        // 1 KiB of the block's shared memory stays for its reductions.
        int staged = 0;
        if (pd != 0 && aligned == 1)
        {
            long budget = Options.CrossEntropyStagedBytes ?? CudaDevice.MaxSharedMemoryPerBlockOptIn - 1024L;
            staged = (int)Math.Min(v * size / 16, Math.Max(0, budget) / 16);
        }
        if (staged == 0 && aligned == 1 && ClusterCrossEntropy(v, logits.DType) is { } cluster)
        {
            void** cargs = stackalloc void*[] { &px, &xs, &pt, &pl, &pd, &ds, &rows, &v, &scale };
            LaunchCluster("softmax.cu", $"cross_entropy_cluster_{Suffix(logits.DType, op)}_v{cluster.Vectors}", rows, (uint)cluster.Ctas, (uint)cluster.Threads, cargs);
            return;
        }
        void** args = stackalloc void*[] { &px, &xs, &pt, &pl, &pd, &ds, &v, &scale, &aligned, &staged };
        Launch("softmax.cu", "cross_entropy_" + Suffix(logits.DType, op), (uint)rows, (uint?)Options.CrossEntropyThreadsPerRow ?? CrossEntropyThreads(v),
            args, (uint)staged * 16);
    }

    /// <summary>
    /// The cluster form of the fused cross-entropy for rows of <paramref name="columns"/> logits (softmax.cu,
    /// <c>cross_entropy_cluster_rows</c>), or null for the one-CTA kernel: <see cref="CudaBackendOptions.CrossEntropyClusterCtas"/>
    /// CTAs a row on compute capability 9.0 and later, each holding its share of the row's 16-byte vectors in registers, for
    /// rows of at least <see cref="CudaBackendOptions.CrossEntropyClusterMinRowBytes"/>.
    /// </summary>
    private (int Ctas, int Vectors, int Threads)? ClusterCrossEntropy(int columns, DType dtype) =>
        CudaDevice.ComputeCapability.Major >= 9 && (long)columns * dtype.SizeInBytes() >= Options.CrossEntropyClusterMinRowBytes
            ? ClusterCrossEntropyShape(columns, dtype.SizeInBytes(), Options.CrossEntropyClusterCtas, Options.CrossEntropyClusterVectors) : null;

    /// <summary>
    /// The cluster cross-entropy's shape for rows of <paramref name="columns"/> elements of <paramref name="elementBytes"/>
    /// bytes over <paramref name="ctas"/> CTAs (0: none), <paramref name="vectors"/> 16-byte vectors a thread (4 or 8, the
    /// kernel's instantiations, in CTAs of at most 1,024 or 512 threads): CTAs of whole warps that cover a CTA's share of the
    /// row's vectors. Null when the share is under one warp's worth (small rows: the one-CTA kernel) or past the largest CTA.
    /// </summary>
    internal static (int Ctas, int Vectors, int Threads)? ClusterCrossEntropyShape(int columns, long elementBytes, int ctas, int vectors)
    {
        if (ctas <= 0) return null;
        if (vectors is not (4 or 8)) throw new ArgumentOutOfRangeException(nameof(vectors), $"the cluster cross-entropy holds 4 or 8 vectors a thread, not {vectors}");
        long count = columns * elementBytes / 16, share = (count + ctas - 1) / ctas;
        long threads = ((share + vectors - 1) / vectors + 31) / 32 * 32;
        return share < 32 || threads > 4096 / vectors ? null : (ctas, vectors, (int)threads);
    }

    /// <summary>
    /// Threads per row of the fused cross-entropy when the options leave it open: 512 from 4,096 columns on, 256 from 256, 128
    /// below. Measured on the H200 (session 16): the kernel alone (<c>CudaLlamaRowOpsSpeedReport</c>) took 358 us at 512
    /// threads against 408 at 256 and 590 at 1,024 (the row kernels' width rule, RowBlock) on GPT-2's chunks of 5,048 rows of
    /// 50,257 logits, and 429 against 441 and 462 on llama-1b's 2,048 rows of 128,256. gpt2-124m 64 x 1024 took 113.1 ms a step
    /// at 1,024 threads and 110.8 at 256 (call 3), and 108.6 at 512 beside PyTorch's 120.5 (call 5). Fewer threads a row put
    /// more blocks on an SM, so one block's reductions overlap the others' loads, and each thread streams more vectors a pass.
    /// </summary>
    internal static uint CrossEntropyThreads(long columns) => columns >= 4096 ? 512u : columns >= 256 ? 256u : 128u;

    /// <summary>Elements between rows of an (N, V) view whose last dimension is contiguous (a contiguous tensor of any rank counts as rows of V).</summary>
    private static long RowStride(string op, string name, Tensor t)
    {
        if (t.IsContiguous) return t.Size(-1);
        if (t.Rank != 2 || (t.Stride(1) != 1 && t.Size(1) > 1))
            throw new ArgumentException($"CudaBackend.{op}: {name} {t.Shape} must be contiguous or a rank-2 (N, V) view with contiguous rows; copy it with Contiguous() first");
        return t.Stride(0);
    }

    public void AdamW(Tensor parameters, Tensor gradients, Tensor m, Tensor v, in AdamWStep step,
        Tensor? gradSumOfSquares = null, Tensor? lowPrecisionCopy = null)
    {
        const string op = "AdamW";
        int lowKind = RequireAdamW(op, parameters, gradients, m, v, step, gradSumOfSquares, lowPrecisionCopy);
        long n = parameters.NumElements;
        if (n == 0) return;
        ulong pp = Ptr(parameters), pg = Ptr(gradients), pm = Ptr(m), pv = Ptr(v), plow = PtrOrNull(lowPrecisionCopy), pss = PtrOrNull(gradSumOfSquares);
        var k = new AdamWScalars(step);
        void** args = stackalloc void*[] { &pp, &pg, &pm, &pv, &plow, &lowKind, &n, &k.Lr, &k.B1, &k.OneMinusB1, &k.B2, &k.OneMinusB2, &k.Eps, &k.Wd, &k.C1, &k.C2, &pss, &k.MaxNorm };
        // Four elements per thread when every pointer allows it (the parameter arena's ranges are aligned): bitwise the same updates.
        long gradBytes = gradients.DType.SizeInBytes(), lowBytes = lowPrecisionCopy?.DType.SizeInBytes() ?? 2;
        bool vec4 = n % 4 == 0 && pp % 16 == 0 && pm % 16 == 0 && pv % 16 == 0 && pg % (ulong)(4 * gradBytes) == 0 && plow % (ulong)(4 * lowBytes) == 0;
        Launch("adamw.cu", (vec4 ? "adamw_vec4_" : "adamw_") + Suffix(gradients.DType, op), GridFor(vec4 ? n / 4 : n), Threads, args);
    }

    /// <summary>
    /// <see cref="IBackend.AdamWRanges"/> in one launch (<c>adamw_items</c>) over a table of work items of at most
    /// <see cref="AdamWItemElements"/> elements each, made once per range list and kept on the device; bitwise the per-range
    /// <see cref="AdamW"/> launches. Falls back to them when an offset, a length or a pointer rules out 16-byte access.
    /// </summary>
    public void AdamWRanges(Tensor parameters, Tensor gradients, Tensor m, Tensor v, IReadOnlyList<AdamWRange> ranges, in AdamWStep step,
        Tensor? gradSumOfSquares = null, Tensor? lowPrecisionCopy = null)
    {
        const string op = "AdamWRanges";
        AdamWRange.Validate(ranges, parameters.NumElements);
        int lowKind = RequireAdamW(op, parameters, gradients, m, v, step, gradSumOfSquares, lowPrecisionCopy);
        ulong pp = Ptr(parameters), pg = Ptr(gradients), pm = Ptr(m), pv = Ptr(v), plow = PtrOrNull(lowPrecisionCopy), pss = PtrOrNull(gradSumOfSquares);
        long gradBytes = gradients.DType.SizeInBytes(), lowBytes = lowPrecisionCopy?.DType.SizeInBytes() ?? 2;
        bool vec4 = pp % 16 == 0 && pm % 16 == 0 && pv % 16 == 0 && pg % (ulong)(4 * gradBytes) == 0 && plow % (ulong)(4 * lowBytes) == 0
            && ranges.All(r => r.Offset % 4 == 0 && r.Length % 4 == 0);
        if (!vec4)
        {
            this.AdamWRangeByRange(parameters, gradients, m, v, ranges, step, gradSumOfSquares, lowPrecisionCopy);
            return;
        }
        var (table, items) = AdamWItemTable(ranges);
        if (items == 0) return;
        var k = new AdamWScalars(step);
        void** args = stackalloc void*[] { &table, &items, &pp, &pg, &pm, &pv, &plow, &lowKind, &k.Lr, &k.B1, &k.OneMinusB1, &k.B2, &k.OneMinusB2,
            &k.Eps, &k.Wd, &k.C1, &k.C2, &pss, &k.MaxNorm };
        Launch("adamw.cu", "adamw_items_" + Suffix(gradients.DType, op), (uint)Math.Min(items, CudaDevice.MultiprocessorCount * 16), Threads, args);
    }

    /// <summary>Elements of one work item of <see cref="AdamWRanges"/> (a multiple of 4): 16 vectors of 4 for each of 256 threads.</summary>
    internal const long AdamWItemElements = 16 * 4 * 256;

    /// <summary>
    /// The work items (first element; element count times 2, plus 1 when decayed) that cover <paramref name="ranges"/> in
    /// pieces of at most <see cref="AdamWItemElements"/>, empty ranges skipped.
    /// </summary>
    internal static long[] AdamWItems(IReadOnlyList<AdamWRange> ranges)
    {
        var items = new List<long>();
        foreach (var r in ranges)
            for (long at = r.Offset, end = r.Offset + r.Length; at < end; at += AdamWItemElements)
            {
                long count = Math.Min(AdamWItemElements, end - at);
                items.Add(at);
                items.Add(count * 2 + (r.WeightDecay ? 1 : 0));
            }
        return [.. items];
    }

    /// <summary>The device copy of <see cref="AdamWItems"/> for this range list (made on first use, kept), and its item count.</summary>
    private (ulong Table, int Items) AdamWItemTable(IReadOnlyList<AdamWRange> ranges)
    {
        string key = string.Join(";", ranges.Select(r => $"{r.Offset},{r.Length},{(r.WeightDecay ? 1 : 0)}"));
        if (!_adamwTables.TryGetValue(key, out var known))
        {
            var items = AdamWItems(ranges);
            // The table's 64-bit values travel as pairs of I32 words (little-endian), the tensor types having no I64.
            var words = System.Runtime.InteropServices.MemoryMarshal.Cast<long, int>(items).ToArray();
            var table = Allocate(new Shape(Math.Max(words.Length, 2)), DType.I32);
            if (words.Length > 0) CopyFromHost<int>(words, table.Narrow(0, new Shape(words.Length)));
            _adamwTables[key] = known = (table, items.Length / 2);
        }
        return (Ptr(known.Table), known.Items);
    }

    private readonly Dictionary<string, (Tensor Table, int Items)> _adamwTables = new();

    /// <summary>
    /// AdamW's arguments: F32 contiguous parameters and moments, gradients and the low-precision copy of as many elements, the
    /// sum of squares and the step (<see cref="RequireNormAndStep"/>). Returns the copy's kind for the kernels: 0 none, 1 BF16, 2 F16.
    /// </summary>
    private static int RequireAdamW(string op, Tensor parameters, Tensor gradients, Tensor m, Tensor v, in AdamWStep step,
        Tensor? gradSumOfSquares, Tensor? lowPrecisionCopy)
    {
        RequireDType(op, "parameters", parameters, DType.F32);
        RequireDType(op, "m", m, DType.F32);
        RequireDType(op, "v", v, DType.F32);
        RequireContiguous(op, "parameters", parameters);
        long n = parameters.NumElements;
        foreach (var (t, name) in new[] { (gradients, "gradients"), (m, "m"), (v, "v"), (lowPrecisionCopy, "lowPrecisionCopy") })
        {
            if (t is null) continue;
            RequireContiguous(op, name, t);
            if (t.NumElements != n) throw new ArgumentException($"CudaBackend.{op}: {name} {t.Shape} must have {n} elements like parameters {parameters.Shape}");
        }
        RequireNormAndStep(op, gradSumOfSquares, step);
        return lowPrecisionCopy?.DType switch
        {
            null => 0,
            DType.BF16 => 1,
            DType.F16 => 2,
            var other => throw new ArgumentException($"CudaBackend.{op}: lowPrecisionCopy must be BF16 or F16, got {other}"),
        };
    }

    /// <summary>The optional gradient sum of squares is one F32 value, and the step count starts at 1.</summary>
    private static void RequireNormAndStep(string op, Tensor? gradSumOfSquares, in AdamWStep step)
    {
        if (gradSumOfSquares is not null)
        {
            RequireDType(op, "gradSumOfSquares", gradSumOfSquares, DType.F32);
            if (gradSumOfSquares.NumElements != 1) throw new ArgumentException($"CudaBackend.{op}: gradSumOfSquares must be a scalar");
        }
        if (step.Step < 1) throw new ArgumentOutOfRangeException(nameof(step), $"AdamW step count must start at 1, got {step.Step}");
    }

    /// <summary>
    /// AdamW's scalars as the CPU backend rounds them (AdamWConstants), in the order the kernels take them, so that the device
    /// update repeats the CPU's operations one for one. A local of this type is a fixed variable: its fields' addresses are
    /// the launch arguments.
    /// </summary>
    private struct AdamWScalars(in AdamWStep step)
    {
        public float Lr = (float)step.LearningRate, B1 = (float)step.Beta1, OneMinusB1 = (float)(1 - step.Beta1);
        public float B2 = (float)step.Beta2, OneMinusB2 = (float)(1 - step.Beta2), Eps = (float)step.Epsilon, Wd = (float)step.WeightDecay;
        public float C1 = (float)(1.0 / (1.0 - Math.Pow(step.Beta1, step.Step))), C2 = (float)(1.0 / (1.0 - Math.Pow(step.Beta2, step.Step)));
        public float MaxNorm = (float)step.MaxGradNorm;
    }

    public void AdamWSplit(Tensor values, Tensor lowWords, Tensor gradients, Tensor m, Tensor v, in AdamWStep step, Tensor? gradSumOfSquares = null)
    {
        const string op = "AdamWSplit";
        RequireSplit(op, values, lowWords, (m, "m", DType.F32), (v, "v", DType.F32));
        RequireContiguous(op, "gradients", gradients);
        long n = values.NumElements;
        if (gradients.NumElements != n) throw new ArgumentException($"CudaBackend.{op}: gradients {gradients.Shape} must have {n} elements like values {values.Shape}");
        if (gradients.DType is not (DType.BF16 or DType.F32))
            throw new ArgumentException($"CudaBackend.{op}: gradients are {gradients.DType}; split masters take BF16 (or F32) gradients");
        RequireNormAndStep(op, gradSumOfSquares, step);
        if (n == 0) return;
        ulong ph = Ptr(values), pl = Ptr(lowWords), pg = Ptr(gradients), pm = Ptr(m), pv = Ptr(v), pss = PtrOrNull(gradSumOfSquares);
        var k = new AdamWScalars(step);
        void** args = stackalloc void*[] { &ph, &pl, &pg, &pm, &pv, &n, &k.Lr, &k.B1, &k.OneMinusB1, &k.B2, &k.OneMinusB2, &k.Eps, &k.Wd, &k.C1, &k.C2, &pss, &k.MaxNorm };
        long gradBytes = gradients.DType.SizeInBytes();
        bool vec4 = n % 4 == 0 && pm % 16 == 0 && pv % 16 == 0 && ph % 8 == 0 && pl % 8 == 0 && pg % (ulong)(4 * gradBytes) == 0;
        Launch("adamw.cu", (vec4 ? "adamw_split_vec4_" : "adamw_split_") + Suffix(gradients.DType, op), GridFor(vec4 ? n / 4 : n), Threads, args);
    }

    public void SplitMasters(Tensor masters, Tensor values, Tensor lowWords)
    {
        const string op = "SplitMasters";
        RequireSplit(op, values, lowWords, (masters, "masters", DType.F32));
        long n = values.NumElements;
        if (n == 0) return;
        ulong pp = Ptr(masters), ph = Ptr(values), pl = Ptr(lowWords);
        void** args = stackalloc void*[] { &pp, &ph, &pl, &n };
        Launch("adamw.cu", "split_masters", GridFor(n), Threads, args);
    }

    public void JoinMasters(Tensor values, Tensor lowWords, Tensor masters)
    {
        const string op = "JoinMasters";
        RequireSplit(op, values, lowWords, (masters, "masters", DType.F32));
        long n = values.NumElements;
        if (n == 0) return;
        ulong ph = Ptr(values), pl = Ptr(lowWords), pp = Ptr(masters);
        void** args = stackalloc void*[] { &ph, &pl, &pp, &n };
        Launch("adamw.cu", "join_masters", GridFor(n), Threads, args);
    }

    /// <summary>Checks a split master's halves (BF16 values, U16 low words) and the tensors beside them: dtypes, contiguous, equal element counts.</summary>
    private static void RequireSplit(string op, Tensor values, Tensor lowWords, params (Tensor Tensor, string Name, DType DType)[] others)
    {
        RequireDType(op, "values", values, DType.BF16);
        RequireDType(op, "lowWords", lowWords, DType.U16);
        RequireContiguous(op, "values", values);
        RequireContiguous(op, "lowWords", lowWords);
        long n = values.NumElements;
        if (lowWords.NumElements != n) throw new ArgumentException($"CudaBackend.{op}: lowWords {lowWords.Shape} must have {n} elements like values {values.Shape}");
        foreach (var (t, name, dtype) in others)
        {
            RequireDType(op, name, t, dtype);
            RequireContiguous(op, name, t);
            if (t.NumElements != n) throw new ArgumentException($"CudaBackend.{op}: {name} {t.Shape} must have {n} elements like values {values.Shape}");
        }
    }
}
