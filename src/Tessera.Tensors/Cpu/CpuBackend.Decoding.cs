namespace Tessera.Tensors.Cpu;

// KV-cache ops at per-sequence positions, and the greedy argmax. On the CPU the positions are plain
// host memory, so each op reads them and runs the position-free op on every sequence's views.
public sealed unsafe partial class CpuBackend
{
    public void Rope(Tensor x, Tensor startPositions, RopeFrequencies frequencies)
    {
        const string op = nameof(Rope);
        ArgumentNullException.ThrowIfNull(x);
        RequireRank(op, nameof(x), x, 4, "(B,T,H,D)");
        var starts = ReadPositions(op, startPositions, x.Shape[0]);
        if (starts.Length == 0) return;
        // One set of frequencies for the whole call: dynamic scaling reads the batch's longest length, as transformers does.
        int length = starts.Max() + x.Shape[1];
        for (int b = 0; b < starts.Length; b++) RopeCore(x.Slice(0, b, 1), starts[b], frequencies, length, inverse: false);
        KeepOperandsAlive(x, startPositions);
    }

    /// <inheritdoc/>
    /// <remarks>Never fused here: the caller's composition (<see cref="AttentionForwardCached"/>, then the output product) is
    /// the reference.</remarks>
    public bool TryAttentionOutputAccumulate(Tensor q, Tensor keyCache, Tensor valueCache, Tensor startPositions, Tensor outputWeight,
        Tensor? outputBias, Tensor target, double scale, int window = 0) => false;

    public void AttentionForwardCached(Tensor q, Tensor keyCache, Tensor valueCache, Tensor startPositions, Tensor output, double scale,
        int window = 0, double softCap = 0)
    {
        const string op = nameof(AttentionForwardCached);
        var (b, t, _, s, _, _) = CheckAttention(op, q, keyCache, valueCache);
        RequireShape(op, nameof(output), output, q.Shape);
        var starts = ReadPositions(op, startPositions, b);
        for (int i = 0; i < b; i++)
        {
            int filled = starts[i] + t;
            if (filled > s)
                throw new ArgumentException($"{op}: sequence {i} starts at {starts[i]} with {t} new positions, beyond the cache's {s}", nameof(startPositions));
            AttentionForward(q.Slice(0, i, 1), keyCache.Slice(0, i, 1).Slice(1, 0, filled), valueCache.Slice(0, i, 1).Slice(1, 0, filled),
                output.Slice(0, i, 1), null, scale, window, softCap);
        }
        KeepOperandsAlive(q, keyCache, valueCache, startPositions, output);
    }

    public void RopeAndAppend(Tensor qkv, int queryHeads, Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies)
    {
        const string op = nameof(RopeAndAppend);
        ArgumentNullException.ThrowIfNull(qkv); ArgumentNullException.ThrowIfNull(keysAndValues);
        RequireRank(op, nameof(qkv), qkv, 4, "(B,T,H+2K,D)");
        RequireRank(op, nameof(keysAndValues), keysAndValues, 4, "(B,S,2K,D)");
        int kv2 = keysAndValues.Size(2);
        if (queryHeads <= 0 || kv2 % 2 != 0 || qkv.Size(2) != queryHeads + kv2)
            throw new ArgumentException($"CpuBackend.{op}: qkv {qkv.Shape} must hold {queryHeads} query heads and the {kv2} key and value heads of keysAndValues {keysAndValues.Shape}");
        Rope(qkv.Slice(2, 0, queryHeads + kv2 / 2), startPositions, frequencies);
        CopyAtPositions(qkv.Slice(2, queryHeads, kv2), keysAndValues, startPositions);
        KeepOperandsAlive(qkv, keysAndValues, startPositions);
    }

    /// <inheritdoc/>
    /// <remarks>The composition: each q and each k head through <see cref="RmsNormForward"/> (copied out to (rows, D) and back),
    /// then <see cref="RopeAndAppend"/>.</remarks>
    public void NormalizeHeadsRopeAndAppend(Tensor qkv, int queryHeads, RmsNormPrologue queryNorm, RmsNormPrologue keyNorm,
        Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies)
    {
        const string op = nameof(NormalizeHeadsRopeAndAppend);
        ArgumentNullException.ThrowIfNull(qkv); ArgumentNullException.ThrowIfNull(keysAndValues);
        RequireRank(op, nameof(qkv), qkv, 4, "(B,T,H+2K,D)");
        RequireRank(op, nameof(keysAndValues), keysAndValues, 4, "(B,S,2K,D)");
        if (!qkv.IsContiguous) throw new ArgumentException($"CpuBackend.{op}: qkv {qkv.Shape} must be contiguous", nameof(qkv));
        int kv2 = keysAndValues.Size(2), d = qkv.Size(3);
        if (queryHeads <= 0 || kv2 % 2 != 0 || qkv.Size(2) != queryHeads + kv2)
            throw new ArgumentException($"CpuBackend.{op}: qkv {qkv.Shape} must hold {queryHeads} query heads and the {kv2} key and value heads of keysAndValues {keysAndValues.Shape}");
        CheckHeadNorms(op, qkv, d, queryNorm, keyNorm);
        NormalizeHeadsInPlace(qkv.Slice(2, 0, queryHeads), queryNorm);
        NormalizeHeadsInPlace(qkv.Slice(2, queryHeads, kv2 / 2), keyNorm);
        RopeAndAppend(qkv, queryHeads, keysAndValues, startPositions, frequencies);
        KeepOperandsAlive(qkv, queryNorm.Weight, keyNorm.Weight, keysAndValues, startPositions);
    }

    /// <summary>Both head norms' weights: (D) of qkv's dtype.</summary>
    private static void CheckHeadNorms(string op, Tensor qkv, int d, RmsNormPrologue queryNorm, RmsNormPrologue keyNorm)
    {
        foreach (var (name, norm) in new[] { (nameof(queryNorm), queryNorm), (nameof(keyNorm), keyNorm) })
            if (norm.Weight.Shape != new Shape(d) || norm.Weight.DType != qkv.DType)
                throw new ArgumentException($"CpuBackend.{op}: {name}'s weight {norm.Weight.DType} {norm.Weight.Shape} must be ({d}) {qkv.DType}", name);
    }

    /// <summary>Each D-channel head of <paramref name="heads"/> (B, T, heads, D), a view, RMS-normalized in place.</summary>
    private void NormalizeHeadsInPlace(Tensor heads, RmsNormPrologue norm)
    {
        int d = heads.Size(-1);
        var rows = Allocate(heads.Shape, heads.DType);
        try
        {
            Copy(heads, rows);
            var flat = rows.Reshape((int)(rows.NumElements / d), d);
            var normalized = Normalized(flat, norm);
            try { Copy(normalized.Reshape(heads.Shape.ToArray()), heads); }
            finally { normalized.Storage.Dispose(); }
        }
        finally
        {
            rows.Storage.Dispose();
        }
    }

    public void MatMulRopeAppend(Tensor x, RmsNormPrologue? norm, Tensor weight, Tensor? bias, Tensor qkv, int queryHeads,
        Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies)
    {
        ArgumentNullException.ThrowIfNull(weight);
        var flat = QkvRows(nameof(MatMulRopeAppend), x, weight.Shape, qkv);
        if (norm is { } r) RmsNormMatMul(x, r, weight, flat, bias);
        else MatMul(x, weight, flat, transposeB: true, bias: bias);
        RopeAndAppend(qkv, queryHeads, keysAndValues, startPositions, frequencies);
        KeepOperandsAlive(x, norm?.Weight, weight, bias, qkv, keysAndValues, startPositions);
    }

    /// <inheritdoc/>
    /// <remarks>The composition: <see cref="QuantizedMatMul"/> into qkv's rows, then <see cref="RopeAndAppend"/>.</remarks>
    public void QuantizedMatMulRopeAppend(Tensor x, RmsNormPrologue? norm, QuantizedWeight weight, Tensor? bias, Tensor qkv, int queryHeads,
        Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies)
    {
        ArgumentNullException.ThrowIfNull(weight);
        var flat = QkvRows(nameof(QuantizedMatMulRopeAppend), x, weight.Shape, qkv);
        QuantizedMatMul(x, weight, flat, bias: bias, norm: norm);
        RopeAndAppend(qkv, queryHeads, keysAndValues, startPositions, frequencies);
        KeepOperandsAlive(x, norm?.Weight, bias, qkv, keysAndValues, startPositions);
    }

    /// <summary>qkv (B, T, H+2K, D), contiguous, as the (B·T, (H+2K)·D) rows of x (B·T, C) times a weight of <paramref name="weight"/>'s shape ((H+2K)·D, C).</summary>
    private static Tensor QkvRows(string op, Tensor x, Shape weight, Tensor qkv)
    {
        ArgumentNullException.ThrowIfNull(x); ArgumentNullException.ThrowIfNull(qkv);
        RequireRank(op, nameof(qkv), qkv, 4, "(B,T,H+2K,D)");
        if (!qkv.IsContiguous) throw new ArgumentException($"CpuBackend.{op}: qkv {qkv.Shape} must be contiguous", nameof(qkv));
        if (x.Rank != 2 || (long)qkv.Size(0) * qkv.Size(1) != x.Size(0) || (long)qkv.Size(2) * qkv.Size(3) != weight[0])
            throw new ArgumentException($"CpuBackend.{op}: x {x.Shape}, weight {weight} and qkv {qkv.Shape} do not fit (B·T, C), ((H+2K)·D, C), (B, T, H+2K, D)");
        return qkv.Reshape(x.Size(0), weight[0]);
    }

    public void CopyAtPositions(Tensor source, Tensor destination, Tensor startPositions)
    {
        const string op = nameof(CopyAtPositions);
        ArgumentNullException.ThrowIfNull(source); ArgumentNullException.ThrowIfNull(destination);
        RequireRank(op, nameof(source), source, 4, "(B,T,R,D)");
        RequireRank(op, nameof(destination), destination, 4, "(B,S,R,D)");
        RequireDType(op, nameof(destination), destination, source.DType);
        int b = source.Shape[0], t = source.Shape[1];
        if (destination.Shape[0] != b || destination.Shape[2] != source.Shape[2] || destination.Shape[3] != source.Shape[3])
            throw new ArgumentException($"{op}: destination {destination.Shape} must be (B,S,R,D) with the B, R, D of source {source.Shape}", nameof(destination));
        var starts = ReadPositions(op, startPositions, b);
        for (int i = 0; i < b; i++)
        {
            if (starts[i] + t > destination.Shape[1])
                throw new ArgumentException($"{op}: sequence {i} at position {starts[i]} has no room for {t} more of {destination.Shape[1]} positions", nameof(startPositions));
            Copy(source.Slice(0, i, 1), destination.Slice(0, i, 1).Slice(1, starts[i], t));
        }
        KeepOperandsAlive(source, destination, startPositions);
    }

    public void FillPositions(Tensor startPositions, Tensor positions)
    {
        const string op = nameof(FillPositions);
        ArgumentNullException.ThrowIfNull(positions);
        RequireRank(op, nameof(positions), positions, 2, "(B,T)");
        RequireDType(op, nameof(positions), positions, DType.I32);
        RequireContiguous(op, nameof(positions), positions);
        int b = positions.Shape[0], t = positions.Shape[1];
        var starts = ReadPositions(op, startPositions, b);
        int* p = Ptr<int>(positions);
        for (int i = 0; i < b; i++)
            for (int j = 0; j < t; j++) p[(long)i * t + j] = starts[i] + j;
        KeepOperandsAlive(startPositions, positions);
    }

    public void Increment(Tensor counters, int amount)
    {
        ArgumentNullException.ThrowIfNull(counters);
        RequireDType(nameof(Increment), nameof(counters), counters, DType.I32);
        RequireContiguous(nameof(Increment), nameof(counters), counters);
        int* p = Ptr<int>(counters);
        for (long i = 0; i < counters.NumElements; i++) p[i] += amount;
        KeepOperandsAlive(counters);
    }

    public void ResolveSampledIds(Tensor ids, Tensor sampled)
    {
        const string op = nameof(ResolveSampledIds);
        ArgumentNullException.ThrowIfNull(ids); ArgumentNullException.ThrowIfNull(sampled);
        RequireDType(op, nameof(ids), ids, DType.I32);
        RequireContiguous(op, nameof(ids), ids);
        RequireDType(op, nameof(sampled), sampled, DType.I32);
        RequireContiguous(op, nameof(sampled), sampled);
        int* p = Ptr<int>(ids), s = Ptr<int>(sampled);
        long m = sampled.NumElements;
        for (long i = 0; i < ids.NumElements; i++)
        {
            if (p[i] >= 0) continue;
            long row = -(long)p[i] - 1;
            if (row >= m) throw new ArgumentException($"{op}: ids[{i}] = {p[i]} names sampled row {row}, but sampled holds {m}", nameof(ids));
            p[i] = s[row];
        }
        KeepOperandsAlive(ids, sampled);
    }

    public void ArgMax(Tensor x, Tensor indices)
    {
        const string op = nameof(ArgMax);
        ArgumentNullException.ThrowIfNull(x); ArgumentNullException.ThrowIfNull(indices);
        RequireComputeDType(op, nameof(x), x);
        RequireRank(op, nameof(x), x, 2, "(N,V)");
        RequireUnitLastStride(op, nameof(x), x);
        RequireDType(op, nameof(indices), indices, DType.I32);
        RequireContiguous(op, nameof(indices), indices);
        int n = x.Shape[0], v = x.Shape[1];
        if (indices.NumElements != n) throw new ArgumentException($"{op}: indices {indices.Shape} must hold one index per row of x {x.Shape}", nameof(indices));
        if (v == 0) throw new ArgumentException($"{op}: x {x.Shape} has no columns", nameof(x));
        int* pi = Ptr<int>(indices);
        long ld = x.Stride(0);
        for (int r = 0; r < n; r++)
        {
            // The first maximum wins; NaN is skipped (an all-NaN row gives 0), as on the GPU and in the host sampler.
            int best = -1;
            if (x.DType == DType.F32)
            {
                float* row = Ptr<float>(x) + r * ld;
                for (int i = 0; i < v; i++) if (!float.IsNaN(row[i]) && (best < 0 || row[i] > row[best])) best = i;
            }
            else
            {
                double* row = Ptr<double>(x) + r * ld;
                for (int i = 0; i < v; i++) if (!double.IsNaN(row[i]) && (best < 0 || row[i] > row[best])) best = i;
            }
            best = Math.Max(best, 0);
            pi[r] = best;
        }
        KeepOperandsAlive(x, indices);
    }

    /// <summary>Row <paramref name="r"/> of logits (M, V) as floats: F64 logits rounded once, as the host sampler reads them.</summary>
    private void ReadRowAsSingles(Tensor logits, int r, float[] row)
    {
        long at = r * logits.Stride(0);
        if (logits.DType == DType.F32) new ReadOnlySpan<float>(Ptr<float>(logits) + at, row.Length).CopyTo(row);
        else { double* src = Ptr<double>(logits) + at; for (int i = 0; i < row.Length; i++) row[i] = (float)src[i]; }
    }

    public void SampleRows(Tensor logits, Tensor parameters, Tensor positions, Tensor ids, bool temperatureOnly = false)
    {
        const string op = nameof(SampleRows);
        ArgumentNullException.ThrowIfNull(logits); ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(positions); ArgumentNullException.ThrowIfNull(ids);
        RequireComputeDType(op, nameof(logits), logits);
        RequireRank(op, nameof(logits), logits, 2, "(M,V)");
        RequireUnitLastStride(op, nameof(logits), logits);
        int m = logits.Shape[0], v = logits.Shape[1];
        if (v == 0) throw new ArgumentException($"{op}: logits {logits.Shape} has no columns", nameof(logits));
        RequireDType(op, nameof(parameters), parameters, DType.I32);
        RequireContiguous(op, nameof(parameters), parameters);
        RequireShape(op, nameof(parameters), parameters, new Shape(m, TokenSampling.ParameterColumns));
        foreach (var (name, t) in new[] { (nameof(positions), positions), (nameof(ids), ids) })
        {
            RequireDType(op, name, t, DType.I32);
            RequireContiguous(op, name, t);
            if (t.NumElements != m) throw new ArgumentException($"{op}: {name} {t.Shape} must hold one value per row of logits {logits.Shape}", name);
        }
        int* pp = Ptr<int>(parameters), pos = Ptr<int>(positions), pi = Ptr<int>(ids);
        var row = new float[v];
        for (int r = 0; r < m; r++)
        {
            ReadRowAsSingles(logits, r, row);
            var (temperature, topK, topP, seed) = TokenSampling.ReadParameters(new ReadOnlySpan<int>(pp + r * TokenSampling.ParameterColumns, TokenSampling.ParameterColumns));
            pi[r] = TokenSampling.Choose(row, temperature, topK, topP, seed, pos[r]);
        }
        KeepOperandsAlive(logits, parameters, positions, ids);
    }

    public void TokenLogprobs(Tensor logits, Tensor ids, int count, Tensor logprobs, Tensor? topIds)
    {
        const string op = nameof(TokenLogprobs);
        ArgumentNullException.ThrowIfNull(logits); ArgumentNullException.ThrowIfNull(ids); ArgumentNullException.ThrowIfNull(logprobs);
        RequireComputeDType(op, nameof(logits), logits);
        RequireRank(op, nameof(logits), logits, 2, "(M,V)");
        RequireUnitLastStride(op, nameof(logits), logits);
        int m = logits.Shape[0], v = logits.Shape[1];
        if (count < 0 || count > v) throw new ArgumentOutOfRangeException(nameof(count), count, $"{op}: count must lie in [0, {v}], the row's columns");
        RequireDType(op, nameof(ids), ids, DType.I32);
        RequireContiguous(op, nameof(ids), ids);
        if (ids.NumElements != m) throw new ArgumentException($"{op}: ids {ids.Shape} must hold one id per row of logits {logits.Shape}", nameof(ids));
        RequireDType(op, nameof(logprobs), logprobs, DType.F32);
        RequireContiguous(op, nameof(logprobs), logprobs);
        RequireShape(op, nameof(logprobs), logprobs, new Shape(m, 1 + count));
        if ((count > 0) != (topIds is not null)) throw new ArgumentException($"{op}: topIds must be given exactly when count ({count}) is above 0", nameof(topIds));
        if (topIds is not null)
        {
            RequireDType(op, nameof(topIds), topIds, DType.I32);
            RequireContiguous(op, nameof(topIds), topIds);
            RequireShape(op, nameof(topIds), topIds, new Shape(m, count));
        }
        int* pi = Ptr<int>(ids);
        float* pl = Ptr<float>(logprobs);
        int* pt = topIds is null ? null : Ptr<int>(topIds);
        var row = new float[v];
        for (int r = 0; r < m; r++)
        {
            ReadRowAsSingles(logits, r, row);
            int id = pi[r];
            if ((uint)id >= (uint)v) throw new ArgumentException($"{op}: ids[{r}] = {id} lies outside the row's {v} columns", nameof(ids));
            pl[r * (1 + count)] = (float)(row[id] - LogProbabilities.LogSumExp(row));
            var top = LogProbabilities.Top(row, count);
            for (int j = 0; j < count; j++)
            {
                (pt![r * count + j], double lp) = j < top.Length ? top[j] : (0, double.NegativeInfinity);   // fewer non-NaN columns than count
                pl[r * (1 + count) + 1 + j] = (float)lp;
            }
        }
        KeepOperandsAlive(logits, ids, logprobs, topIds);
    }

    public void AddToColumns(Tensor x, Tensor starts, Tensor columns, Tensor values)
    {
        const string op = nameof(AddToColumns);
        ArgumentNullException.ThrowIfNull(x); ArgumentNullException.ThrowIfNull(starts);
        ArgumentNullException.ThrowIfNull(columns); ArgumentNullException.ThrowIfNull(values);
        RequireDType(op, nameof(x), x, DType.F32);
        RequireRank(op, nameof(x), x, 2, "(M,V)");
        RequireUnitLastStride(op, nameof(x), x);
        int m = x.Shape[0], v = x.Shape[1];
        RequireDType(op, nameof(starts), starts, DType.I32);
        RequireContiguous(op, nameof(starts), starts);
        if (starts.NumElements != m + 1) throw new ArgumentException($"{op}: starts {starts.Shape} must hold {m + 1} offsets, one per row of x {x.Shape} and the end", nameof(starts));
        RequireDType(op, nameof(columns), columns, DType.I32);
        RequireContiguous(op, nameof(columns), columns);
        RequireDType(op, nameof(values), values, DType.F32);
        RequireContiguous(op, nameof(values), values);
        int* ps = Ptr<int>(starts), pc = Ptr<int>(columns);
        float* pv = Ptr<float>(values), px = Ptr<float>(x);
        long ld = x.Stride(0), entries = Math.Min(columns.NumElements, values.NumElements);
        var seen = new HashSet<int>();
        for (int r = 0; r < m; r++)
        {
            if (ps[r] < 0 || ps[r] > ps[r + 1] || ps[r + 1] > entries)
                throw new ArgumentException($"{op}: row {r}'s entries [{ps[r]}, {ps[r + 1]}) do not lie within the {entries} given", nameof(starts));
            seen.Clear();
            for (int e = ps[r]; e < ps[r + 1]; e++)
            {
                int c = pc[e];
                if ((uint)c >= (uint)v) throw new ArgumentException($"{op}: row {r}'s column {c} lies outside its {v} columns", nameof(columns));
                if (!seen.Add(c)) throw new ArgumentException($"{op}: row {r} names column {c} twice (its entries are added in parallel on a device)", nameof(columns));
                px[r * ld + c] += pv[e];
            }
        }
        KeepOperandsAlive(x, starts, columns, values);
    }

    /// <inheritdoc/>
    /// <remarks>The product into gateUp, then <see cref="SwiGluForward"/> on its halves.</remarks>
    public void GateUpSwiGlu(Tensor x, Tensor gateUpWeight, Tensor gateUp, Tensor activated) =>
        GateUpSwiGluComposition.Apply(this, x, gateUpWeight, gateUp, activated);

    /// <inheritdoc/>
    /// <remarks>The product into dActivated, then <see cref="SwiGluBackward"/> into dGateUp's halves.</remarks>
    public void DownSwiGluBackward(Tensor dOutput, Tensor downWeight, Tensor gateUp, Tensor dGateUp, Tensor dActivated) =>
        DownSwiGluBackwardComposition.Apply(this, dOutput, downWeight, gateUp, dGateUp, dActivated);

    public void MatMulSwiGlu(Tensor x, Tensor gateWeight, Tensor upWeight, Tensor output, Tensor? gateBias = null, Tensor? upBias = null,
        RmsNormPrologue? norm = null, bool geluGate = false)
    {
        ArgumentNullException.ThrowIfNull(x); ArgumentNullException.ThrowIfNull(output);
        var normalized = norm is RmsNormPrologue n ? Normalized(x, n) : null;
        var gate = Allocate(output.Shape, output.DType);
        var up = Allocate(output.Shape, output.DType);
        try
        {
            MatMul(normalized ?? x, gateWeight, gate, transposeB: true, bias: gateBias);
            MatMul(normalized ?? x, upWeight, up, transposeB: true, bias: upBias);
            if (geluGate)
            {
                GeluForward(gate, gate);
                Multiply(gate, up, output);
            }
            else SwiGluForward(gate, up, output);
        }
        finally
        {
            gate.Storage.Dispose();
            up.Storage.Dispose();
            normalized?.Storage.Dispose();
        }
        KeepOperandsAlive(x, gateWeight, upWeight, output, gateBias, upBias, norm?.Weight);
    }

    public void RmsNormMatMul(Tensor x, RmsNormPrologue norm, Tensor weight, Tensor output, Tensor? bias = null)
    {
        ArgumentNullException.ThrowIfNull(x);
        var normalized = Normalized(x, norm);
        try
        {
            MatMul(normalized, weight, output, transposeB: true, bias: bias);
        }
        finally
        {
            normalized.Storage.Dispose();
        }
        KeepOperandsAlive(x, norm.Weight, weight, output, bias);
    }

    /// <summary>RMSNorm(x) in a new tensor, which the caller disposes (the composition of the fused inference ops).</summary>
    private Tensor Normalized(Tensor x, RmsNormPrologue norm)
    {
        var h = Allocate(x.Shape, x.DType);
        var rstd = Allocate(new Shape(x.Size(0)), x.DType == DType.F64 ? DType.F64 : DType.F32);
        try
        {
            RmsNormForward(x, norm.Weight, h, rstd, norm.Epsilon, norm.UnitOffset);
        }
        catch
        {
            h.Storage.Dispose();
            throw;
        }
        finally
        {
            rstd.Storage.Dispose();
        }
        return h;
    }

    /// <summary>Reads (B) I32 start positions, checking their shape and sign.</summary>
    private int[] ReadPositions(string op, Tensor startPositions, int batch)
    {
        ArgumentNullException.ThrowIfNull(startPositions);
        RequireDType(op, nameof(startPositions), startPositions, DType.I32);
        if (startPositions.Rank != 1 || startPositions.Shape[0] != batch)
            throw new ArgumentException($"{op}: startPositions {startPositions.Shape} must be ({batch}), one position per sequence", nameof(startPositions));
        var starts = new int[batch];
        int* p = Ptr<int>(startPositions);
        long stride = startPositions.Stride(0);
        for (int i = 0; i < batch; i++)
        {
            starts[i] = p[i * stride];
            if (starts[i] < 0) throw new ArgumentException($"{op}: startPositions[{i}] = {starts[i]} is negative", nameof(startPositions));
        }
        return starts;
    }
}
