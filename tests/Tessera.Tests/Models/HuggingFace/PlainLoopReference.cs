namespace Tessera.Tests.Models.HuggingFace;

/// <summary>
/// The independent plain-loop reference that the model-family tests (Qwen3, Qwen2-MoE, Mixtral / Qwen3-MoE, Phi-3, Gemma)
/// compare Tessera against: transformers' formulas for one token or one head, in double, with plain loops. It is written
/// deliberately without Tessera's code (nothing here calls into src/), so that a wrong formula in Tessera cannot be copied
/// into the expectation. Each family's own pieces (Gemma's caps and local layers, Phi-3's LongRoPE table, the MoE routing)
/// stay in its test.
/// </summary>
internal static class PlainLoopReference
{
    /// <summary>The rows of token ids from an embedding table (V, <paramref name="hidden"/>), widened to double.</summary>
    public static double[][] Embed(float[] table, int[] tokens, int hidden) =>
        tokens.Select(id => table.Skip(id * hidden).Take(hidden).Select(v => (double)v).ToArray()).ToArray();

    /// <summary>
    /// RMSNorm of x[offset, offset + length) (length -1: all of x): x / sqrt(mean(x^2) + eps) * w, or * (1 + w) with
    /// <paramref name="unitOffset"/> (Gemma's norms). A slice serves the per-head q/k norms.
    /// </summary>
    public static double[] RmsNorm(double[] x, float[] w, double eps, int offset = 0, int length = -1, bool unitOffset = false)
    {
        int c = length < 0 ? x.Length : length;
        double ms = 0;
        for (int i = 0; i < c; i++) ms += x[offset + i] * x[offset + i];
        double r = 1 / Math.Sqrt(ms / c + eps);
        var y = new double[c];
        for (int i = 0; i < c; i++) y[i] = x[offset + i] * r * (unitOffset ? 1.0 + w[i] : w[i]);
        return y;
    }

    /// <summary>
    /// y = W x + b for rows [from, from + rows) of W (.., cols) row-major, cols = x.Length; <paramref name="from"/> reads a
    /// fused tensor's part (Phi-3's qkv_proj, gate_up_proj), <paramref name="bias"/> (rows) is optional.
    /// </summary>
    public static double[] MatVec(float[] w, double[] x, int rows, float[]? bias = null, int from = 0)
    {
        int cols = x.Length;
        var y = new double[rows];
        for (int r = 0; r < rows; r++)
        {
            double s = bias is null ? 0 : bias[r];
            for (int c = 0; c < cols; c++) s += w[(from + r) * cols + c] * x[c];
            y[r] = s;
        }
        return y;
    }

    /// <summary>
    /// Rotates x[offset, offset + rotary) in place as rotate_half does: channel i pairs with i + rotary / 2 and turns by
    /// <paramref name="angle"/>(i); cos and sin are multiplied by <paramref name="scale"/> (LongRoPE's attention factor, 1 elsewhere).
    /// Channels past the rotary ones (partial rotary) are left alone.
    /// </summary>
    public static void Rope(double[] x, int offset, int rotary, Func<int, double> angle, double scale = 1)
    {
        int half = rotary / 2;
        for (int i = 0; i < half; i++)
        {
            double a = angle(i);
            double cos = Math.Cos(a) * scale, sin = Math.Sin(a) * scale;
            double u = x[offset + i], v = x[offset + i + half];
            x[offset + i] = u * cos - v * sin;
            x[offset + i + half] = v * cos + u * sin;
        }
    }

    /// <summary>
    /// Rotates the head of <paramref name="dim"/> channels at x[offset..] for position <paramref name="pos"/> with the inverse
    /// frequencies theta^(-2i / dim) / factor (factor: linear scaling, 1 for none).
    /// </summary>
    public static void Rope(double[] x, int offset, int dim, int pos, double theta, double factor = 1) =>
        Rope(x, offset, dim, i => pos * Math.Pow(theta, -2.0 * i / dim) / factor);

    /// <summary>
    /// Causal grouped-query attention of position <paramref name="p"/>: query head h (d channels of q) reads key/value head
    /// h / (heads / kvHeads) of k[j], v[j] for j in [first, p], first = p - window + 1 with a window (0: none); the softmax is
    /// taken over <paramref name="logit"/>(q · k) (default q · k / sqrt(d)). Returns the heads' outputs (heads * d).
    /// </summary>
    public static double[] CausalAttention(double[] q, double[][] k, double[][] v, int p, int heads, int kvHeads, int d,
        int window = 0, Func<double, double>? logit = null)
    {
        var att = new double[heads * d];
        int first = window > 0 ? Math.Max(0, p - window + 1) : 0;
        for (int hd = 0; hd < heads; hd++)
        {
            int g = hd / (heads / kvHeads);
            var scores = new double[p + 1];
            for (int j = first; j <= p; j++)
            {
                double s = 0;
                for (int i = 0; i < d; i++) s += q[hd * d + i] * k[j][g * d + i];
                scores[j] = logit is null ? s / Math.Sqrt(d) : logit(s);
            }
            double max = scores.Skip(first).Max(), sum = 0;
            for (int j = first; j <= p; j++) { scores[j] = Math.Exp(scores[j] - max); sum += scores[j]; }
            for (int j = first; j <= p; j++)
                for (int i = 0; i < d; i++) att[hd * d + i] += scores[j] / sum * v[j][g * d + i];
        }
        return att;
    }

    /// <summary>SwiGLU's activation of one token: SiLU(gate) * up, elementwise.</summary>
    public static double[] SwiGlu(double[] gate, double[] up)
    {
        var act = new double[gate.Length];
        for (int i = 0; i < act.Length; i++) act[i] = gate[i] / (1 + Math.Exp(-gate[i])) * up[i];
        return act;
    }

    /// <summary>A SwiGLU MLP of one token: down (hidden, ffn) times SiLU(gate h) * up h, gate and up (ffn, C).</summary>
    public static double[] SwiGlu(float[] gate, float[] up, float[] down, double[] h, int ffn, int hidden) =>
        MatVec(down, SwiGlu(MatVec(gate, h, ffn), MatVec(up, h, ffn)), hidden);

    /// <summary>GeGLU's activation of one token (Gemma's gelu_pytorch_tanh): GELU_tanh(gate) * up, elementwise.</summary>
    public static double[] GeGlu(double[] gate, double[] up)
    {
        var act = new double[gate.Length];
        for (int i = 0; i < act.Length; i++) act[i] = GeluTanh(gate[i]) * up[i];
        return act;
    }

    private static double GeluTanh(double x) => 0.5 * x * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
}
