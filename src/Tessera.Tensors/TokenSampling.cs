namespace Tessera.Tensors;

/// <summary>
/// The definition of a sampled token, shared by the host sampler and every backend's <see cref="IBackend.SampleRows"/>:
/// a pure function of the row of logits, the temperature, top-k, top-p, the request's seed and the position the token will
/// take in its sequence. Nothing is carried from one draw to the next, so the token at a position does not depend on the
/// batch, on preemption (a recomputed sequence draws the same tokens) or on speculative decoding (a verifying row draws the
/// token the plain decode step would have drawn), and a device can draw it without the host.
/// <para>
/// The rule: with temperature 0 (or below), the argmax (<see cref="ArgMax"/>). Otherwise the candidates are the finite or
/// infinite logits (NaN is never drawn), ordered by logit, highest first, the lower id first on ties; top-k keeps the first
/// k of them; top-p keeps the shortest prefix of those whose softmax probabilities (at the temperature, over what top-k
/// kept) sum to at least p; and the token is the kept candidate of the largest score (logit - max) / temperature + g, where
/// g is a Gumbel variable drawn for (seed, position, token) (<see cref="Noise"/>): the Gumbel-max trick, which draws from the
/// softmax of the kept logits at the temperature without normalizing them. A row whose largest logit is infinite draws the
/// argmax.
/// </para>
/// <para>
/// The noise is -log(-log u), u = (2k + 1) 2^-24 for 23 bits k of a SplitMix64 hash of the row's key and the token; both
/// logarithms are of exact float inputs, so the host and a GPU compute the same floats up to their logf's last bit. It is
/// bounded by about 16.6: a candidate 16.6 below the best in (logit - max) / temperature is never drawn (probability
/// e^-16.6, 6e-8, of the best's).
/// </para>
/// </summary>
public static class TokenSampling
{
    /// <summary>Columns of a row of <see cref="IBackend.SampleRows"/>'s parameters (I32): the temperature's float bits,
    /// top-k, top-p's float bits, the seed's low and high 32 bits.</summary>
    public const int ParameterColumns = 5;

    /// <summary>Writes one row of <see cref="IBackend.SampleRows"/>'s parameters.</summary>
    public static void WriteParameters(Span<int> row, float temperature, int topK, float topP, ulong seed)
    {
        if (row.Length < ParameterColumns) throw new ArgumentException($"TokenSampling.WriteParameters: a row holds {ParameterColumns} values, got {row.Length}", nameof(row));
        row[0] = BitConverter.SingleToInt32Bits(temperature);
        row[1] = topK;
        row[2] = BitConverter.SingleToInt32Bits(topP);
        row[3] = unchecked((int)(uint)seed);
        row[4] = unchecked((int)(uint)(seed >> 32));
    }

    /// <summary>Reads one row of parameters written by <see cref="WriteParameters"/>.</summary>
    public static (float Temperature, int TopK, float TopP, ulong Seed) ReadParameters(ReadOnlySpan<int> row) =>
        (BitConverter.Int32BitsToSingle(row[0]), row[1], BitConverter.Int32BitsToSingle(row[2]), (uint)row[3] | (ulong)(uint)row[4] << 32);

    /// <summary>
    /// Above every value <see cref="Noise"/> takes (its largest, -log(-log(1 - 2^-24)), is 16.64): a candidate whose
    /// (logit - max) / temperature lies more than this below the best score so far cannot win, and its noise need not be drawn.
    /// </summary>
    public const float NoiseBound = 16.7f;

    /// <summary>The key of the draw at <paramref name="position"/> for <paramref name="seed"/>.</summary>
    public static ulong RowKey(ulong seed, long position) => SplitMix64.Mix(unchecked(seed + SplitMix64.Golden * (ulong)(position + 1)));

    /// <summary>The Gumbel noise of <paramref name="token"/> in the draw of <paramref name="rowKey"/>.</summary>
    public static float Noise(ulong rowKey, int token)
    {
        ulong h = SplitMix64.Mix(rowKey ^ unchecked(0xD1B54A32D192ED03UL * (ulong)(token + 1)));
        float u = (2 * (uint)(h >> 41) + 1) * 5.9604644775390625e-8f;   // (2k + 1) 2^-24 in (0, 1), exact
        return -MathF.Log(-MathF.Log(u));
    }

    /// <summary>The token drawn from <paramref name="logits"/> (see the class remarks).</summary>
    public static int Choose(ReadOnlySpan<float> logits, float temperature, int topK, float topP, ulong seed, long position)
    {
        if (logits.IsEmpty) throw new ArgumentException("TokenSampling.Choose: the row is empty", nameof(logits));
        int best = ArgMax(logits);
        float max = logits[best];
        if (!(temperature > 0) || float.IsNaN(max) || float.IsInfinity(max)) return best;
        int candidates = 0;
        foreach (var v in logits) if (!float.IsNaN(v)) candidates++;
        bool filtered = (topK > 0 && topK < candidates) || topP < 1;
        ulong key = RowKey(seed, position);
        if (!filtered) return Gumbel(logits, max, temperature, key, []);

        // The kept candidates in their order (logit descending, id ascending), without sorting the whole row: top-k's best k
        // by a bounded heap; for top-p alone, the candidates within a widening distance of the maximum, until their mass
        // holds the cut (every candidate at least as likely as the cut's lies within it).
        int[] order;
        int keep;
        if (topK > 0 && topK < candidates)
        {
            order = Best(logits, topK);
            keep = topK;
            if (topP < 1) keep = Math.Max(1, NucleusLength(logits, order, keep, max, temperature, topP, Mass(logits, order, keep, max, temperature)));
        }
        else
        {
            double total = 0;
            foreach (var v in logits) if (!float.IsNaN(v)) total += Math.Exp(((double)v - max) / temperature);
            for (double reach = 8; ; reach *= 2)
            {
                order = Within(logits, max, temperature, reach);
                keep = NucleusLength(logits, order, order.Length, max, temperature, topP, total);
                if (keep > 0 || order.Length == candidates) break;
            }
            if (keep == 0) keep = order.Length;                               // the rounding of the sums: every candidate
        }
        return Gumbel(logits, max, temperature, key, order.AsSpan(0, keep));
    }

    private static readonly Comparer<(float Logit, int Id)> Worse =
        Comparer<(float Logit, int Id)>.Create((a, b) => a.Logit != b.Logit ? a.Logit.CompareTo(b.Logit) : b.Id.CompareTo(a.Id));

    /// <summary>The <paramref name="k"/> first candidates in the order logit descending, id ascending.</summary>
    private static int[] Best(ReadOnlySpan<float> logits, int k)
    {
        var heap = new PriorityQueue<int, (float, int)>(k, Worse);   // the worst kept candidate on top
        for (int i = 0; i < logits.Length; i++)
        {
            float v = logits[i];
            if (float.IsNaN(v)) continue;
            if (heap.Count < k) heap.Enqueue(i, (v, i));
            else
            {
                int worst = heap.Peek();
                if (Worse.Compare((v, i), (logits[worst], worst)) > 0) heap.EnqueueDequeue(i, (v, i));
            }
        }
        var best = new int[heap.Count];
        for (int j = best.Length - 1; j >= 0; j--) best[j] = heap.Dequeue();
        return best;
    }

    /// <summary>The candidates whose (logit - max) / temperature is at least -<paramref name="reach"/>, in their order.</summary>
    private static int[] Within(ReadOnlySpan<float> logits, float max, float temperature, double reach)
    {
        var near = new List<int>();
        for (int i = 0; i < logits.Length; i++)
            if (!float.IsNaN(logits[i]) && ((double)logits[i] - max) / temperature >= -reach) near.Add(i);
        var order = near.ToArray();
        var values = logits.ToArray();
        Array.Sort(order, (a, b) => values[a] != values[b] ? values[b].CompareTo(values[a]) : a.CompareTo(b));
        return order;
    }

    /// <summary>The sum of the first <paramref name="count"/> candidates' exp((logit - max) / temperature), in double.</summary>
    private static double Mass(ReadOnlySpan<float> logits, int[] order, int count, float max, float temperature)
    {
        double sum = 0;
        for (int i = 0; i < count; i++) sum += Math.Exp(((double)logits[order[i]] - max) / temperature);
        return sum;
    }

    /// <summary>How many of the first <paramref name="count"/> candidates top-p keeps: the shortest prefix whose mass reaches
    /// <paramref name="topP"/> of <paramref name="total"/>; 0 when these candidates do not reach it.</summary>
    private static int NucleusLength(ReadOnlySpan<float> logits, int[] order, int count, float max, float temperature, float topP, double total)
    {
        double target = topP * total, cumulative = 0;
        for (int i = 0; i < count; i++)
        {
            cumulative += Math.Exp(((double)logits[order[i]] - max) / temperature);
            if (cumulative >= target) return i + 1;
        }
        return 0;
    }

    /// <summary>
    /// Index of the largest logit: the lowest index on ties, as PyTorch's argmax; NaN is skipped (0 when all are NaN), the
    /// rule of <see cref="IBackend.ArgMax"/>.
    /// </summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = -1;
        for (int i = 0; i < logits.Length; i++)
            if (!float.IsNaN(logits[i]) && (best < 0 || logits[i] > logits[best])) best = i;
        return Math.Max(best, 0);
    }

    /// <summary>The candidate of the largest score among every non-NaN logit (<paramref name="kept"/> empty) or the kept ones;
    /// the lowest id on ties.</summary>
    private static int Gumbel(ReadOnlySpan<float> logits, float max, float temperature, ulong key, ReadOnlySpan<int> kept)
    {
        int chosen = -1;
        float top = float.NegativeInfinity;
        int count = kept.IsEmpty ? logits.Length : kept.Length;
        for (int j = 0; j < count; j++)
        {
            int i = kept.IsEmpty ? j : kept[j];
            float logit = logits[i];
            if (float.IsNaN(logit)) continue;
            float scaled = (logit - max) / temperature;
            if (chosen >= 0 && scaled + NoiseBound < top) continue;        // cannot win: its noise is at most NoiseBound
            float score = scaled + Noise(key, i);
            if (chosen < 0 || score > top || (score == top && i < chosen)) { chosen = i; top = score; }
        }
        return chosen;
    }
}
