namespace Tessera.Nn.Layers;

using Tessera.Tensors;

/// <summary>The position-wise MLP of a transformer block (GELU for GPT-2, SwiGLU for Llama, a sparse mixture of SwiGLU experts for Mixtral and Qwen3-MoE).</summary>
public interface IFeedForward
{
    /// <summary>Name prefix of the parameters and activations.</summary>
    string Name { get; }

    /// <summary>The communication in front of the first products (nothing on one device).</summary>
    Parallel.ITensorParallelRegion Input { get; }

    /// <summary>The output projection (F to C), whose initialization is scaled down with depth.</summary>
    Linear Projection { get; }

    /// <summary>y (N, C) from x (N, C) (+ <paramref name="residual"/> (N, C), added by the last product), in a pooled buffer;
    /// saves what backward needs.</summary>
    Tensor Forward(in PassContext ctx, Tensor x, Tensor? residual = null);

    /// <summary>
    /// Inference: <paramref name="residual"/> (N, C) += the MLP of norm(x) for x (N, C), the last product accumulating and the
    /// norm fused into the first products where the backend can; saves nothing.
    /// </summary>
    void ForwardAccumulate(in PassContext ctx, Tensor x, INormalization norm, Tensor residual);

    /// <summary>
    /// Inference: <paramref name="output"/> (N, C) = the MLP of norm(x), written (a branch that a post-norm reads before its
    /// residual add, Gemma). By default zeros, then <see cref="ForwardAccumulate"/>; an MLP whose last product can write
    /// overrides it to save the fill.
    /// </summary>
    void ForwardInto(in PassContext ctx, Tensor x, INormalization norm, Tensor output)
    {
        output.Backend.Fill(output, 0);
        ForwardAccumulate(ctx, x, norm, output);
    }

    /// <summary>
    /// dx (N, C) from dy (N, C) (= or +=, when <paramref name="accumulateDx"/>); parameter gradients accumulate. With
    /// <paramref name="projectionBiasGradientTaken"/> the caller has added the column sums of dy to <see cref="Projection"/>'s
    /// bias gradient already (<see cref="Linear.TakesBiasGradientFromOutputGradientSums"/>), and only its weight gradient is taken.
    /// </summary>
    void Backward(in PassContext ctx, Tensor dy, Tensor dx, bool accumulateDx = false, bool projectionBiasGradientTaken = false);
}
