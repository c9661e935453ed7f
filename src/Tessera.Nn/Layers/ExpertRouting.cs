using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>
/// The routing of N tokens over E experts, decided on the host in F64 from the router's logits (N, E): p = softmax(logits)
/// per token, the k experts of highest p (ties broken towards the lower expert index, a rule torch.topk does not promise),
/// and their weights, p itself or p divided by the sum of the k chosen p (renormalized: Mixtral; Qwen3-MoE's norm_topk_prob).
/// Also the load-balancing loss of the routing and the gradient of the router's logits.
/// </summary>
public sealed class ExpertRouting
{
    private readonly int[][] _tokens, _slots;

    private ExpertRouting(int tokens, int experts, int k, bool normalize, double[] probabilities, int[] selected, double[] weights)
    {
        Tokens = tokens;
        Experts = experts;
        ExpertsPerToken = k;
        Normalize = normalize;
        Probabilities = probabilities;
        Selected = selected;
        Weights = weights;
        var counts = new int[experts];
        foreach (int e in selected) counts[e]++;
        _tokens = counts.Select(c => new int[c]).ToArray();
        _slots = counts.Select(c => new int[c]).ToArray();
        Array.Clear(counts);
        for (int n = 0; n < tokens; n++)                      // token order within an expert: ascending
            for (int s = 0; s < k; s++)
            {
                int e = selected[n * k + s];
                _tokens[e][counts[e]] = n;
                _slots[e][counts[e]++] = n * k + s;
            }
    }

    /// <summary>Tokens N.</summary>
    public int Tokens { get; }

    /// <summary>Experts E.</summary>
    public int Experts { get; }

    /// <summary>Experts a token is routed to, k.</summary>
    public int ExpertsPerToken { get; }

    /// <summary>Whether the k weights of a token are divided by their sum.</summary>
    public bool Normalize { get; }

    /// <summary>(N, E) row-major: the router's softmax probabilities.</summary>
    public double[] Probabilities { get; }

    /// <summary>(N, k) row-major: each token's experts, by falling probability (ties: lower index first).</summary>
    public int[] Selected { get; }

    /// <summary>(N, k) row-major: the weight of each selected expert's output.</summary>
    public double[] Weights { get; }

    /// <summary>The tokens routed to expert <paramref name="expert"/>, ascending.</summary>
    public ReadOnlySpan<int> TokensOf(int expert) => _tokens[expert];

    /// <summary>The (N, k) slots (token · k + rank) routed to expert <paramref name="expert"/>, in the order of <see cref="TokensOf"/>.</summary>
    public ReadOnlySpan<int> SlotsOf(int expert) => _slots[expert];

    /// <summary>Routes <paramref name="tokens"/> tokens from their logits (N, E) row-major.</summary>
    public static ExpertRouting Route(ReadOnlySpan<double> logits, int tokens, int experts, int k, bool normalize)
    {
        if (experts < 1 || k < 1 || k > experts)
            throw new ArgumentException($"ExpertRouting: experts per token ({k}) must be in [1, experts = {experts}]");
        if (logits.Length != (long)tokens * experts)
            throw new ArgumentException($"ExpertRouting: {logits.Length} logits are not {tokens} tokens x {experts} experts");
        var p = new double[tokens * experts];
        var selected = new int[tokens * k];
        var weights = new double[tokens * k];
        var taken = new bool[experts];
        for (int n = 0; n < tokens; n++)
            ExpertChoice.Route(logits.Slice(n * experts, experts), p.AsSpan(n * experts, experts), taken, normalize,
                selected.AsSpan(n * k, k), weights.AsSpan(n * k, k));
        return new ExpertRouting(tokens, experts, k, normalize, p, selected, weights);
    }

    /// <summary>f_e: the fraction of tokens routed to expert e (among their k; the fractions sum to k, as transformers' load_balancing_loss_func counts).</summary>
    public double RoutedFraction(int expert) => Tokens == 0 ? 0 : (double)_tokens[expert].Length / Tokens;

    /// <summary>P_e: the mean router probability of expert e over the tokens.</summary>
    public double MeanProbability(int expert)
    {
        double sum = 0;
        for (int n = 0; n < Tokens; n++) sum += Probabilities[n * Experts + expert];
        return Tokens == 0 ? 0 : sum / Tokens;
    }

    /// <summary>The load-balancing loss coef · E · Σ_e f_e P_e (Switch Transformer; Mixtral's with k slots a token).</summary>
    public double AuxiliaryLoss(double coefficient)
    {
        if (coefficient == 0) return 0;
        double sum = 0;
        for (int e = 0; e < Experts; e++) sum += RoutedFraction(e) * MeanProbability(e);
        return coefficient * Experts * sum;
    }

    /// <summary>
    /// dL/dlogits (N, E) row-major from dL/dw (N, k), the gradient of each slot's weight (the dot product of the output's
    /// gradient and the expert's output for that token), plus <paramref name="auxiliaryWeight"/> times the gradient of
    /// <see cref="AuxiliaryLoss"/>(<paramref name="coefficient"/>), which flows through P only (f is a count).
    /// </summary>
    public double[] LogitGradient(ReadOnlySpan<double> weightGradients, double coefficient = 0, double auxiliaryWeight = 0)
    {
        int k = ExpertsPerToken, experts = Experts;
        if (weightGradients.Length != Tokens * k)
            throw new ArgumentException($"ExpertRouting: {weightGradients.Length} weight gradients are not {Tokens} tokens x {k} slots");
        var auxiliary = new double[experts];                  // d(weight · aux)/dp_ne, the same for every token
        if (coefficient != 0 && auxiliaryWeight != 0)
            for (int e = 0; e < experts; e++) auxiliary[e] = auxiliaryWeight * coefficient * experts * RoutedFraction(e) / Tokens;
        var dz = new double[Tokens * experts];
        var dp = new double[experts];
        for (int n = 0; n < Tokens; n++)
        {
            auxiliary.CopyTo(dp, 0);
            var g = weightGradients.Slice(n * k, k);
            if (Normalize)
            {
                // w_s = p_s / S, S = Σ p over the chosen: dL/dp_j = (g_j - Σ_s g_s w_s) / S for a chosen j.
                double chosen = 0, gw = 0;
                for (int s = 0; s < k; s++)
                {
                    chosen += Probabilities[n * experts + Selected[n * k + s]];
                    gw += g[s] * Weights[n * k + s];
                }
                for (int s = 0; s < k; s++) dp[Selected[n * k + s]] += (g[s] - gw) / chosen;
            }
            else for (int s = 0; s < k; s++) dp[Selected[n * k + s]] += g[s];
            // Softmax: dz_e = p_e (dp_e - Σ_i p_i dp_i).
            var row = Probabilities.AsSpan(n * experts, experts);
            double dot = 0;
            for (int e = 0; e < experts; e++) dot += row[e] * dp[e];
            for (int e = 0; e < experts; e++) dz[n * experts + e] = row[e] * (dp[e] - dot);
        }
        return dz;
    }
}
