namespace Tessera.Tensors.Cpu;

// The device-routed mixture-of-experts ops in plain loops (F64 arithmetic, F32 or F64 storage): the reference the CUDA
// kernels (moe.cu) are held to, and the same rule as the host's ExpertRouting.
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
            for (int h = 0; h < f; h++)
            {
                double g = 0, u = 0;
                for (int i = 0; i < c; i++)
                {
                    double xi = Read(x, row * c + i);
                    g += xi * Read(experts.Gate[e], (long)h * c + i);
                    u += xi * Read(experts.Up[e], (long)h * c + i);
                }
                Write(hidden, p * f + h, g / (1 + Math.Exp(-g)) * u);
            }
        });
        KeepOperandsAlive(x, offsets, slots, hidden);
    }

    /// <inheritdoc/>
    public void MoeExpertDown(Tensor hidden, MoeExpertWeights experts, Tensor offsets, Tensor slots, Tensor expertOutput)
    {
        var (pairs, _) = MoeOpShapes.ExpertDown(nameof(CpuBackend), hidden, experts, offsets, slots, expertOutput);
        RequireComputeDType(nameof(MoeExpertDown), nameof(hidden), hidden);
        int c = experts.Channels, f = experts.Hidden;
        ForEachPair(nameof(MoeExpertDown), offsets, slots, experts.Experts, pairs, (p, e, slot) =>
        {
            for (int o = 0; o < c; o++)
            {
                double y = 0;
                for (int h = 0; h < f; h++) y += Read(hidden, p * f + h) * Read(experts.Down[e], (long)o * f + h);
                Write(expertOutput, slot * c + o, y);
            }
        });
        KeepOperandsAlive(hidden, offsets, slots, expertOutput);
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
