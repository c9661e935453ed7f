using Tessera.Tensors;

namespace Tessera.Cuda;

// Mixture of experts routed on the device (moe.cu): routing, alignment, the experts' products over a fixed grid and the
// combine, with nothing read back, so decode steps of MoE models can be recorded as graphs.
public sealed unsafe partial class CudaBackend
{
    /// <summary>Threads of the experts' CTAs (8 warps; each warp takes output features of the CTA's tile of 32).</summary>
    private const int MoeExpertThreads = 256, MoeFeatures = 32, MoeAlignThreads = 1024, MoeRouteThreads = 128;

    public void MoeRoute(Tensor logits, Tensor expertIds, Tensor weights, bool normalize)
    {
        var (n, e, k) = MoeOpShapes.Route(nameof(CudaBackend), logits, expertIds, weights);
        RequireDType(nameof(MoeRoute), "weights", weights, DType.F32);
        if (n == 0) return;
        ulong pl = Ptr(logits), pi = Ptr(expertIds), pw = Ptr(weights);
        int norm = normalize ? 1 : 0;
        void** args = stackalloc void*[] { &pl, &n, &e, &k, &norm, &pi, &pw };
        Launch("moe.cu", "moe_route_" + Suffix(logits.DType, nameof(MoeRoute)), (uint)((n + MoeRouteThreads - 1) / MoeRouteThreads), MoeRouteThreads, args);
    }

    public void MoeAlign(Tensor expertIds, Tensor offsets, Tensor slots)
    {
        var (n, e, k) = MoeOpShapes.Align(nameof(CudaBackend), expertIds, offsets, slots);
        int pairs = n * k;
        ulong pi = Ptr(expertIds), po = Ptr(offsets), ps = Ptr(slots);
        void** args = stackalloc void*[] { &pi, &pairs, &e, &po, &ps };
        Launch("moe.cu", "moe_align", 1, MoeAlignThreads, args);
    }

    public void MoeExpertSwiGlu(Tensor x, MoeExpertWeights experts, Tensor offsets, Tensor slots, Tensor hidden)
    {
        var (n, k) = MoeOpShapes.ExpertSwiGlu(nameof(CudaBackend), x, experts, offsets, slots, hidden);
        var table = RequireTable(nameof(MoeExpertSwiGlu), experts);
        if (n == 0) return;
        int c = experts.Channels, f = experts.Hidden, group = experts.GroupSize;
        ulong px = Ptr(x), pt = Ptr(table), po = Ptr(offsets), ps = Ptr(slots), ph = Ptr(hidden);
        void** args = stackalloc void*[] { &px, &pt, &po, &ps, &k, &c, &f, &ph, &group };
        string suffix = Suffix(x.DType, nameof(MoeExpertSwiGlu));
        if (MoeGemmFits(experts, x, hidden))
        {
            int blocks = (f + DecodeGemmBlockRows / 2 - 1) / (DecodeGemmBlockRows / 2);   // 64 outputs a CTA (gate and up rows)
            LaunchMoeGemm("moe_gemm_swiglu_" + ExpertKernelForm(experts) + suffix, experts, n * k, blocks, c, args);
            return;
        }
        Launch("moe.cu", "moe_expert_swiglu_" + ExpertKernelForm(experts) + suffix,
            ((uint)experts.Experts, (uint)((f + MoeFeatures - 1) / MoeFeatures), 1), MoeExpertThreads, args);
    }

    public void MoeExpertDown(Tensor hidden, MoeExpertWeights experts, Tensor offsets, Tensor slots, Tensor expertOutput)
    {
        var (pairs, _) = MoeOpShapes.ExpertDown(nameof(CudaBackend), hidden, experts, offsets, slots, expertOutput);
        var table = RequireTable(nameof(MoeExpertDown), experts);
        if (pairs == 0) return;
        int c = experts.Channels, f = experts.Hidden, group = experts.DownGroupSize;
        ulong ph = Ptr(hidden), pt = Ptr(table), po = Ptr(offsets), ps = Ptr(slots), py = Ptr(expertOutput);
        void** args = stackalloc void*[] { &ph, &pt, &po, &ps, &c, &f, &py, &group };
        string suffix = Suffix(hidden.DType, nameof(MoeExpertDown));
        if (MoeGemmFits(experts, hidden, expertOutput))
        {
            LaunchMoeGemm("moe_gemm_down_" + ExpertKernelForm(experts) + suffix, experts, pairs, (c + DecodeGemmBlockRows - 1) / DecodeGemmBlockRows, f, args);
            return;
        }
        Launch("moe.cu", "moe_expert_down_" + ExpertKernelForm(experts) + suffix,
            ((uint)experts.Experts, (uint)((c + MoeFeatures - 1) / MoeFeatures), 1), MoeExpertThreads, args);
    }

    public void MoeCombine(Tensor expertOutput, Tensor weights, Tensor output, Tensor? shared = null, Tensor? sharedGateLogits = null)
    {
        var (n, k, c) = MoeOpShapes.Combine(nameof(CudaBackend), expertOutput, weights, output, shared, sharedGateLogits);
        RequireDType(nameof(MoeCombine), "weights", weights, DType.F32);
        if ((long)n * c == 0) return;
        ulong py = Ptr(expertOutput), pw = Ptr(weights), po = Ptr(output), psh = PtrOrNull(shared), pg = PtrOrNull(sharedGateLogits);
        void** args = stackalloc void*[] { &py, &pw, &po, &psh, &pg, &n, &k, &c };
        Launch("moe.cu", "moe_combine_" + Suffix(output.DType, nameof(MoeCombine)), GridFor((long)n * c), Threads, args);
    }

    public MoeExpertWeights PrepareMoeExperts(IReadOnlyList<Tensor> gate, IReadOnlyList<Tensor> up, IReadOnlyList<Tensor> down)
    {
        var checkedLists = new MoeExpertWeights(gate, up, down, addresses: null);    // checks the lists before anything is uploaded
        _ = Suffix(checkedLists.DType, nameof(PrepareMoeExperts));
        RefuseWhileCapturing(nameof(PrepareMoeExperts));
        int experts = checkedLists.Experts;
        var words = new ulong[3 * experts];
        for (int e = 0; e < experts; e++)
        {
            words[3 * e] = Ptr(gate[e]);
            words[3 * e + 1] = Ptr(up[e]);
            words[3 * e + 2] = Ptr(down[e]);
        }
        var addresses = Allocate(new Shape(experts, 6), DType.I32);
        CopyFromHost<int>(System.Runtime.InteropServices.MemoryMarshal.Cast<ulong, int>(words), addresses);
        return new MoeExpertWeights(gate, up, down, addresses, MoeGemmRowDTypes(checkedLists));
    }

    public MoeExpertWeights PrepareMoeExperts(IReadOnlyList<QuantizedWeight> gate, IReadOnlyList<QuantizedWeight> up, IReadOnlyList<QuantizedWeight> down)
    {
        var checkedLists = new MoeExpertWeights(gate, up, down, addresses: null);    // checks the lists before anything is uploaded
        if (checkedLists.Backend != this) throw new ArgumentException($"CudaBackend.{nameof(PrepareMoeExperts)}: the experts' weights live on another backend");
        RefuseWhileCapturing(nameof(PrepareMoeExperts));
        int experts = checkedLists.Experts;
        var words = new ulong[9 * experts];
        for (int e = 0; e < experts; e++)
            foreach (var (w, at) in new[] { (gate[e], 0), (up[e], 3), (down[e], 6) })
            {
                words[9 * e + at] = Ptr(w.Values);
                words[9 * e + at + 1] = Ptr(w.Scales);
                words[9 * e + at + 2] = w.Zeros is { } z ? Ptr(z) : 0;
            }
        var addresses = Allocate(new Shape(experts, 18), DType.I32);
        CopyFromHost<int>(System.Runtime.InteropServices.MemoryMarshal.Cast<ulong, int>(words), addresses);
        return new MoeExpertWeights(gate, up, down, addresses, rowDTypes: [DType.F32, DType.BF16, DType.F16], MoeGemmRowDTypes(checkedLists));
    }

    /// <summary>
    /// Whether an expert product with rows <paramref name="input"/> and <paramref name="output"/> takes moe.cu's tensor-core form
    /// (<c>moe_gemm_*</c>, <see cref="CudaBackendOptions.MoeExpertTensorCores"/>): the experts were prepared for it at the rows'
    /// dtype (<see cref="MoeExpertWeights.AtWeightBandwidth"/>, <see cref="MoeGemmRowDTypes"/>), and both row buffers are 16-byte
    /// aligned.
    /// </summary>
    private static bool MoeGemmFits(MoeExpertWeights experts, Tensor input, Tensor output) =>
        experts.AtWeightBandwidth(input.DType) && Ptr(input) % 16 == 0 && Ptr(output) % 16 == 0;

    /// <summary>Whether these experts' products over rows of <paramref name="rows"/> take the tensor-core form: the option,
    /// compute capability 9.0 (its K slices are thread-block clusters), BF16 or F16 rows (a 16-bit expert's own dtype), C and
    /// F multiples of 64 (the k-tile), int4 experts in groups of a multiple of 64 for both products (the decode product by
    /// group sums).</summary>
    private bool MoeGemmTakes(MoeExpertWeights experts, DType rows) =>
        Options.MoeExpertTensorCores && CudaDevice.ComputeCapability.Major >= 9 && rows is (DType.BF16 or DType.F16)
        && (experts.IsQuantized || experts.DType == rows) && experts.Channels % DecodeGemmTile == 0 && experts.Hidden % DecodeGemmTile == 0
        && (!experts.IsInt4 || (experts.GroupSize % DecodeGemmTile == 0 && experts.DownGroupSize % DecodeGemmTile == 0));

    /// <summary>The rows' dtypes whose expert products run on tensor cores (<see cref="MoeExpertWeights.AtWeightBandwidth"/>): those
    /// <see cref="MoeGemmTakes"/> allows, where every weight's values are 16-byte aligned (the stages' 16-byte copies) and an
    /// int4 weight's scales and zeros 4-byte aligned (the group sums' staged words); none otherwise.</summary>
    private DType[] MoeGemmRowDTypes(MoeExpertWeights experts)
    {
        var values = experts.IsQuantized
            ? new[] { experts.QuantizedGate!, experts.QuantizedUp!, experts.QuantizedDown! }.SelectMany(l => l)
                .SelectMany(w => new[] { (Ptr(w.Values), 16UL), (Ptr(w.Scales), 4UL), (w.Zeros is { } z ? Ptr(z) : 0UL, 4UL) })
            : new[] { experts.Gate, experts.Up, experts.Down }.SelectMany(l => l).Select(w => (Ptr(w), 16UL));
        if (values.Any(v => v.Item1 % v.Item2 != 0)) return [];
        return [.. new[] { DType.BF16, DType.F16 }.Where(t => MoeGemmTakes(experts, t))];
    }

    /// <summary>
    /// Launches a <c>moe_gemm_*</c> kernel over (slices of <paramref name="inputs"/>, <paramref name="blocks"/> row blocks, the
    /// experts), each row block's slices one cluster: K split while the row blocks of the experts that can have rows
    /// (<paramref name="pairs"/> at most) leave SMs idle (<see cref="DecodeGemmSlices"/>'s rule), and the shared memory of the
    /// form's largest tile of x (64 rows).
    /// </summary>
    private void LaunchMoeGemm(string kernel, MoeExpertWeights experts, int pairs, int blocks, int inputs, void** args)
    {
        int slices = DecodeGemmSlices(blocks * Math.Min(experts.Experts, pairs), inputs / DecodeGemmTile);
        uint shared = !experts.IsQuantized ? DecodeGemmShared(8)
            : experts.IsInt4 ? DecodeGemmInt4Shared(8, groupSums: true, DecodeGemmStages) : DecodeGemmQuantizedShared(8);
        // Not dependent: the kernels read the alignment's offsets and slots before decode_gemm's pdl_wait.
        Launch("moe.cu", kernel, ((uint)slices, (uint)blocks, (uint)experts.Experts), DecodeGemmThreads, args, shared, dependent: false, clusterX: (uint)slices);
    }

    /// <summary>The expert kernels' form in their names: "" for floating-point weights, "q8_" for int8, "q4_" for int4.</summary>
    private static string ExpertKernelForm(MoeExpertWeights experts) => !experts.IsQuantized ? "" : experts.IsInt4 ? "q4_" : "q8_";

    /// <summary>The experts' table of addresses, refusing weights prepared by another backend.</summary>
    private Tensor RequireTable(string op, MoeExpertWeights experts) =>
        experts.Addresses is { } t && t.Backend == this ? t
            : throw new ArgumentException($"CudaBackend.{op}: the experts' weights were not prepared by this backend; build them with PrepareMoeExperts");
}
