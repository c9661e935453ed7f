namespace Tessera.Tensors.Cpu;

// The device-routed mixture-of-experts ops in plain loops (F64 arithmetic, F32 or F64 storage; int8 and int4 experts read
// as the values they stand for): the reference the CUDA kernels (moe.cu) are held to, and the same rule as the host's ExpertRouting.
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
    public void MoeExpertSwiGlu(Tensor x, MoeExpertWeights experts, Tensor offsets, Tensor slots, Tensor hidden)
    {
        var (n, k) = MoeOpShapes.ExpertSwiGlu(nameof(CpuBackend), x, experts, offsets, slots, hidden);
        RequireComputeDType(nameof(MoeExpertSwiGlu), nameof(x), x);
        int c = experts.Channels, f = experts.Hidden;
        ForEachPair(nameof(MoeExpertSwiGlu), offsets, slots, experts.Experts, (long)n * k, (p, e, slot) =>
        {
            long row = slot / k;
            var gate = ExpertWeight(experts, 0, e);
            var up = ExpertWeight(experts, 1, e);
            for (int h = 0; h < f; h++)
            {
                double g = 0, u = 0;
                for (int i = 0; i < c; i++)
                {
                    double xi = Read(x, row * c + i);
                    g += xi * gate.At(h, i);
                    u += xi * up.At(h, i);
                }
                Write(hidden, p * f + h, g / (1 + Math.Exp(-g)) * u);
            }
        });
        KeepOperandsAlive(x, offsets, slots, hidden);
        GC.KeepAlive(experts);
    }

    /// <inheritdoc/>
    public void MoeExpertDown(Tensor hidden, MoeExpertWeights experts, Tensor offsets, Tensor slots, Tensor expertOutput)
    {
        var (pairs, _) = MoeOpShapes.ExpertDown(nameof(CpuBackend), hidden, experts, offsets, slots, expertOutput);
        RequireComputeDType(nameof(MoeExpertDown), nameof(hidden), hidden);
        int c = experts.Channels, f = experts.Hidden;
        ForEachPair(nameof(MoeExpertDown), offsets, slots, experts.Experts, pairs, (p, e, slot) =>
        {
            var down = ExpertWeight(experts, 2, e);
            for (int o = 0; o < c; o++)
            {
                double y = 0;
                for (int h = 0; h < f; h++) y += Read(hidden, p * f + h) * down.At(o, h);
                Write(expertOutput, slot * c + o, y);
            }
        });
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

    /// <summary>Expert <paramref name="e"/>'s gate (part 0), up (1) or down (2) weight, read element by element in F64.</summary>
    private ExpertWeightReader ExpertWeight(MoeExpertWeights experts, int part, int e)
    {
        if (experts.QuantizedGate is not { } qg)
        {
            var w = part switch { 0 => experts.Gate[e], 1 => experts.Up[e], _ => experts.Down[e] };
            return w.DType == DType.F64
                ? new ExpertWeightReader { F64 = Ptr<double>(w), Columns = w.Size(1) }
                : new ExpertWeightReader { F32 = Ptr<float>(w), Columns = w.Size(1) };
        }
        var q = part switch { 0 => qg[e], 1 => experts.QuantizedUp![e], _ => experts.QuantizedDown![e] };
        return q.IsInt4
            ? new ExpertWeightReader { Packed = Ptr<int>(q.Values), Scales = Ptr<float>(q.Scales), Zeros = Ptr<sbyte>(q.Zeros!), Columns = q.Columns, Groups = q.Groups, GroupSize = q.GroupSize }
            : new ExpertWeightReader { I8 = Ptr<sbyte>(q.Values), Scales = Ptr<float>(q.Scales), Columns = q.Columns };
    }

    /// <summary>
    /// One expert weight (N, K) as the reference reads it: a floating-point value, or what a quantized one stands for in F64
    /// (int8: scale x value; int4: scale (q - zero) of the element's group, its nibble 4 (k mod 8) of word k / 8).
    /// </summary>
    private readonly struct ExpertWeightReader
    {
        public double* F64 { get; init; }
        public float* F32 { get; init; }
        public sbyte* I8 { get; init; }
        public int* Packed { get; init; }
        public float* Scales { get; init; }
        public sbyte* Zeros { get; init; }
        public int Columns { get; init; }
        public int Groups { get; init; }
        public int GroupSize { get; init; }

        public double At(long row, int col)
        {
            if (F64 != null) return F64[row * Columns + col];
            if (F32 != null) return F32[row * Columns + col];
            if (I8 != null) return (double)Scales[row] * I8[row * Columns + col];
            long g = row * Groups + col / GroupSize;
            int nibble = (Packed[row * (Columns / Int4Quantization.PerWord) + col / Int4Quantization.PerWord] >> (4 * (col % Int4Quantization.PerWord))) & 0xF;
            return (double)Scales[g] * (nibble - Zeros[g]);
        }
    }

    /// <summary>Calls <paramref name="body"/>(pair, expert, slot) for every pair of the aligned slots, checking them.</summary>
    private void ForEachPair(string op, Tensor offsets, Tensor slots, int experts, long pairs, Action<long, int, long> body)
    {
        int* po = Ptr<int>(offsets), ps = Ptr<int>(slots);
        if (po[0] != 0 || po[experts] > pairs)
            throw new ArgumentException($"{op}: offsets run from {po[0]} to {po[experts]}; they must run from 0 to at most {pairs}, as MoeAlign writes them", nameof(offsets));
        for (int e = 0; e < experts; e++)
        {
            if (po[e + 1] < po[e]) throw new ArgumentException($"{op}: offsets[{e + 1}] ({po[e + 1]}) is below offsets[{e}] ({po[e]})", nameof(offsets));
            for (long p = po[e]; p < po[e + 1]; p++)
            {
                if ((ulong)ps[p] >= (ulong)pairs) throw new ArgumentException($"{op}: slots[{p}] = {ps[p]} is no slot of [0, {pairs})", nameof(slots));
                body(p, e, ps[p]);
            }
        }
    }

    private double Read(Tensor t, long i) => t.DType == DType.F64 ? Ptr<double>(t)[i] : Ptr<float>(t)[i];

    private void Write(Tensor t, long i, double v)
    {
        if (t.DType == DType.F64) Ptr<double>(t)[i] = v;
        else Ptr<float>(t)[i] = (float)v;
    }
}
