namespace Tessera.Tensors.Cpu;

// The device-routed mixture-of-experts ops (F32 or F64 storage): routing, alignment and combine in plain loops (F64
// arithmetic; the same rule as the host's ExpertRouting), the experts through this backend's own products over each
// expert's gathered rows (int8 and int4 experts through its quantized products). The reference the CUDA kernels (moe.cu)
// are held to.
public sealed unsafe partial class CpuBackend
{
    /// <inheritdoc/>
    public void MoeRoute(Tensor logits, Tensor expertIds, Tensor weights, bool normalize)
    {
        var (n, e, k) = MoeOpShapes.Route(nameof(CpuBackend), logits, expertIds, weights);
        RequireComputeDType(nameof(MoeRoute), nameof(logits), logits);
        int* ids = Ptr<int>(expertIds);
        double[] z = new double[e], p = new double[e], w = new double[k];
        var taken = new bool[e];
        for (int r = 0; r < n; r++)
        {
            for (int j = 0; j < e; j++) z[j] = Read(logits, (long)r * e + j);
            ExpertChoice.Route(z, p, taken, normalize, new Span<int>(ids + (long)r * k, k), w);
            for (int s = 0; s < k; s++) Write(weights, (long)r * k + s, w[s]);
        }
        KeepOperandsAlive(logits, expertIds, weights);
    }

    /// <inheritdoc/>
    public void MoeAlign(Tensor expertIds, Tensor offsets, Tensor slots)
    {
        var (n, e, k) = MoeOpShapes.Align(nameof(CpuBackend), expertIds, offsets, slots);
        int* ids = Ptr<int>(expertIds), po = Ptr<int>(offsets), ps = Ptr<int>(slots);
        long pairs = (long)n * k;
        for (int j = 0; j <= e; j++) po[j] = 0;
        for (long i = 0; i < pairs; i++)
        {
            if ((uint)ids[i] >= (uint)e)
                throw new ArgumentException($"{nameof(MoeAlign)}: expertIds[{i / k}, {i % k}] = {ids[i]} is no expert of [0, {e})", nameof(expertIds));
            po[ids[i] + 1]++;
        }
        for (int j = 0; j < e; j++) po[j + 1] += po[j];
        var next = new int[e];
        for (int j = 0; j < e; j++) next[j] = po[j];
        for (long i = 0; i < pairs; i++) ps[next[ids[i]]++] = (int)i;    // ascending slots: row order within an expert
        KeepOperandsAlive(expertIds, offsets, slots);
    }

    /// <inheritdoc/>
    /// <remarks>Each expert's rows gathered into one block (pair order, so an expert's rows are contiguous) and its SwiGLU as
    /// the dense layers run it on this backend (<see cref="MatMulSwiGlu"/>, or <see cref="QuantizedMatMulSwiGlu"/> over
    /// quantized experts), written into its rows of hidden: the CPU's products, not a loop a weight (which made a decode step
    /// of a mixture of experts 9-20x slower on the CPU than the host routing's products, session 35).</remarks>
    public void MoeExpertSwiGlu(Tensor x, MoeExpertWeights experts, Tensor offsets, Tensor slots, Tensor hidden)
    {
        var (n, k) = MoeOpShapes.ExpertSwiGlu(nameof(CpuBackend), x, experts, offsets, slots, hidden);
        RequireComputeDType(nameof(MoeExpertSwiGlu), nameof(x), x);
        long pairs = (long)n * k;
        CheckPairs(nameof(MoeExpertSwiGlu), offsets, slots, experts.Experts, pairs, out int* po, out int* ps);
        int c = experts.Channels, size = x.DType.SizeInBytes();
        var gathered = Allocate(new Shape((int)Math.Max(1, po[experts.Experts]), c), x.DType);
        try
        {
            byte* from = BytePtr(x), to = BytePtr(gathered);
            for (long p = 0; p < po[experts.Experts]; p++)
                Buffer.MemoryCopy(from + ps[p] / k * (long)c * size, to + p * c * size, (long)c * size, (long)c * size);
            for (int e = 0; e < experts.Experts; e++)
            {
                int begin = po[e], rows = po[e + 1] - begin;
                if (rows == 0) continue;
                var xe = gathered.Slice(0, begin, rows);
                var he = hidden.Slice(0, begin, rows);
                if (experts.QuantizedGate is { } qg) QuantizedMatMulSwiGlu(xe, qg[e], experts.QuantizedUp![e], he);
                else MatMulSwiGlu(xe, experts.Gate[e], experts.Up[e], he);
            }
        }
        finally { gathered.Storage.Dispose(); }
        KeepOperandsAlive(x, offsets, slots, hidden);
        GC.KeepAlive(experts);
    }

    /// <inheritdoc/>
    /// <remarks>Each expert's contiguous rows of hidden through its down product as a dense layer runs it on this backend
    /// (<see cref="MatMul"/> or <see cref="QuantizedMatMul"/>), then each pair's row written to its slot.</remarks>
    public void MoeExpertDown(Tensor hidden, MoeExpertWeights experts, Tensor offsets, Tensor slots, Tensor expertOutput)
    {
        var (pairs, _) = MoeOpShapes.ExpertDown(nameof(CpuBackend), hidden, experts, offsets, slots, expertOutput);
        RequireComputeDType(nameof(MoeExpertDown), nameof(hidden), hidden);
        CheckPairs(nameof(MoeExpertDown), offsets, slots, experts.Experts, pairs, out int* po, out int* ps);
        int c = experts.Channels, size = hidden.DType.SizeInBytes();
        var byPair = Allocate(new Shape((int)Math.Max(1, po[experts.Experts]), c), hidden.DType);
        try
        {
            for (int e = 0; e < experts.Experts; e++)
            {
                int begin = po[e], rows = po[e + 1] - begin;
                if (rows == 0) continue;
                var he = hidden.Slice(0, begin, rows);
                var ye = byPair.Slice(0, begin, rows);
                if (experts.QuantizedDown is { } qd) QuantizedMatMul(he, qd[e], ye);
                else MatMul(he, experts.Down[e], ye, transposeB: true);
            }
            byte* from = BytePtr(byPair), to = BytePtr(expertOutput);
            for (long p = 0; p < po[experts.Experts]; p++)
                Buffer.MemoryCopy(from + p * c * size, to + ps[p] * (long)c * size, (long)c * size, (long)c * size);
        }
        finally { byPair.Storage.Dispose(); }
        KeepOperandsAlive(hidden, offsets, slots, expertOutput);
        GC.KeepAlive(experts);
    }

    /// <inheritdoc/>
    public void MoeCombine(Tensor expertOutput, Tensor weights, Tensor output, Tensor? shared = null, Tensor? sharedGateLogits = null)
    {
        var (n, k, c) = MoeOpShapes.Combine(nameof(CpuBackend), expertOutput, weights, output, shared, sharedGateLogits);
        RequireComputeDType(nameof(MoeCombine), nameof(output), output);
        for (int r = 0; r < n; r++)
        {
            double gate = 0;
            if (sharedGateLogits is not null)
            {
                double z = Read(sharedGateLogits, r);
                gate = z >= 0 ? 1 / (1 + Math.Exp(-z)) : Math.Exp(z) / (1 + Math.Exp(z));
            }
            for (int o = 0; o < c; o++)
            {
                double acc = Read(output, (long)r * c + o);
                for (int s = 0; s < k; s++)                       // slot order: deterministic
                    acc += Read(weights, (long)r * k + s) * Read(expertOutput, ((long)r * k + s) * c + o);
                if (shared is not null) acc += gate * Read(shared, (long)r * c + o);
                Write(output, (long)r * c + o, acc);
            }
        }
        KeepOperandsAlive(expertOutput, weights, output, shared, sharedGateLogits);
    }

    /// <inheritdoc/>
    public MoeExpertWeights PrepareMoeExperts(IReadOnlyList<Tensor> gate, IReadOnlyList<Tensor> up, IReadOnlyList<Tensor> down)
    {
        var weights = new MoeExpertWeights(gate, up, down, addresses: null);
        if (weights.Gate[0].Backend != this) throw new ArgumentException($"{nameof(PrepareMoeExperts)}: the experts' weights live on another backend");
        RequireComputeDType(nameof(PrepareMoeExperts), "the experts' weights", weights.Gate[0]);
        return weights;
    }

    /// <inheritdoc/>
    public MoeExpertWeights PrepareMoeExperts(IReadOnlyList<QuantizedWeight> gate, IReadOnlyList<QuantizedWeight> up, IReadOnlyList<QuantizedWeight> down)
    {
        var weights = new MoeExpertWeights(gate, up, down, addresses: null);
        if (weights.Backend != this) throw new ArgumentException($"{nameof(PrepareMoeExperts)}: the experts' weights live on another backend");
        return weights;
    }

    /// <summary>Checks the aligned pairs (offsets from 0 up to at most <paramref name="pairs"/>, ascending; every slot of
    /// an expert's range within [0, pairs)) and gives the two tables.</summary>
    private void CheckPairs(string op, Tensor offsets, Tensor slots, int experts, long pairs, out int* po, out int* ps)
    {
        po = Ptr<int>(offsets);
        ps = Ptr<int>(slots);
        if (po[0] != 0 || po[experts] > pairs)
            throw new ArgumentException($"{op}: offsets run from {po[0]} to {po[experts]}; they must run from 0 to at most {pairs}, as MoeAlign writes them", nameof(offsets));
        for (int e = 0; e < experts; e++)
        {
            if (po[e + 1] < po[e]) throw new ArgumentException($"{op}: offsets[{e + 1}] ({po[e + 1]}) is below offsets[{e}] ({po[e]})", nameof(offsets));
            for (long p = po[e]; p < po[e + 1]; p++)
                if ((ulong)ps[p] >= (ulong)pairs) throw new ArgumentException($"{op}: slots[{p}] = {ps[p]} is no slot of [0, {pairs})", nameof(slots));
        }
    }

    private double Read(Tensor t, long i) => t.DType == DType.F64 ? Ptr<double>(t)[i] : Ptr<float>(t)[i];

    private void Write(Tensor t, long i, double v)
    {
        if (t.DType == DType.F64) Ptr<double>(t)[i] = v;
        else Ptr<float>(t)[i] = (float)v;
    }
}
