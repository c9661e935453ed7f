using Tessera.Models;

namespace Tessera.Bench.Serving;

/// <summary>
/// The least time any server could take for one level of the serve bench, from the work it must do: every prompt's prefill
/// (the layers' products, twice their matrix parameters a token, plus causal attention over the prompt) and every generated
/// token's forward (the same products, attention over the cached positions, the LM head), at a dense product peak; and at
/// least <c>rounds x (new - 1)</c> steps after the prefills (each client's requests run in turn, and a request's first token
/// comes from its prefill), each reading the weights and the batch's cached keys and values at the copy bandwidth.
/// <see cref="InTurn"/> runs prefill and decode one after the other; <see cref="Overlapped"/> assumes every step costs only
/// the larger of its compute and its memory traffic (prefill spread thinly over the decode steps); <see cref="Dependent"/> adds
/// what Overlapped leaves out, that the request prefilled last still has all its decode steps to run after every prefill is
/// done: the bound no schedule beats.
/// </summary>
public sealed record ServingFloor(double PrefillTflop, double DecodeTflop, int Steps, double StepBytes, double WeightBytes, double PeakFlops,
    double CopyBytesPerSecond)
{
    /// <summary>The dense BF16 product peak the floors use: what a large cuBLASLt product reaches on an H200 (docs/benchmarks.md, ../shared GPU notes: about 790 TFLOP/s).</summary>
    public const double H200ProductPeak = 790e12;

    /// <summary>Seconds with prefill first, then the decode steps (each the larger of its compute and its memory time).</summary>
    public double InTurn => PrefillTflop * 1e12 / PeakFlops + Steps * Math.Max(StepBytes / CopyBytesPerSecond, DecodeTflop * 1e12 / Steps / PeakFlops);

    /// <summary>Seconds if compute and memory traffic overlapped perfectly over the whole level.</summary>
    public double Overlapped => Math.Max((PrefillTflop + DecodeTflop) * 1e12 / PeakFlops, Steps * StepBytes / CopyBytesPerSecond);

    /// <summary>
    /// Seconds no schedule can beat: <see cref="Overlapped"/>, or, when longer, every prompt's prefill at the product peak (the
    /// last prompt's prefill ends no earlier than all of them) followed by the decode steps of the request prefilled last,
    /// each reading at least the weights at the copy bandwidth. For the issue-14 level (llama-1b, 64 prompts of 512, 128 new)
    /// on the H200 this is about 157 ms (52,000 tokens/s) where Overlapped is 111 ms (73,800).
    /// </summary>
    public double Dependent => Math.Max(Overlapped, PrefillTflop * 1e12 / PeakFlops + Steps * WeightBytes / CopyBytesPerSecond);

    /// <summary>
    /// The floor of a level: <paramref name="requests"/> prompts of <paramref name="prompt"/> tokens, each generating
    /// <paramref name="newTokens"/>, <paramref name="rounds"/> requests per client in turn, <paramref name="batch"/> sequences
    /// decoding at once; <paramref name="weightBytes"/> and <paramref name="kvBytesPerPosition"/> as the bench counts them.
    /// </summary>
    public static ServingFloor For(TransformerConfig config, int requests, int rounds, int batch, int prompt, int newTokens,
        long weightBytes, long kvBytesPerPosition, double peakFlops, double copyBytesPerSecond)
    {
        double c = config.Embedding, d = config.HeadSize, h = config.Heads, kv = config.EffectiveKvHeads, f = config.EffectiveHidden;
        double mlp = config.Family == ModelFamily.Llama ? 3 * c * f : 2 * c * f;
        double layerParams = c * (h + 2 * kv) * d + h * d * c + mlp;
        double productFlops = 2 * config.Layers * layerParams;                  // a token through every layer's products
        double Attention(double keys) => 4 * config.Layers * h * d * keys;      // QK^T and PV over `keys` positions
        double head = 2 * c * config.EffectivePaddedVocab;
        double prefill = requests * (prompt * productFlops + Attention(prompt / 2.0) * prompt + head);
        int generatedAfterPrefill = newTokens - 1;
        double decode = (double)requests * generatedAfterPrefill * (productFlops + Attention(prompt + newTokens / 2.0) + head);
        int steps = rounds * generatedAfterPrefill;
        double stepBytes = weightBytes + (double)batch * (prompt + newTokens / 2.0) * kvBytesPerPosition;
        return new ServingFloor(prefill / 1e12, decode / 1e12, steps, stepBytes, weightBytes, peakFlops, copyBytesPerSecond);
    }
}
