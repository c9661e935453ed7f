using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>A per-row normalization with a learned scale (LayerNorm, RMSNorm).</summary>
public interface INormalization
{
    /// <summary>Name prefix of the parameters and activations.</summary>
    string Name { get; }

    /// <summary>Scale (C).</summary>
    Parameter Weight { get; }

    /// <summary>Normalizes x (N, C) into a pooled buffer; saves what backward needs.</summary>
    Tensor Forward(in PassContext ctx, Tensor x);

    /// <summary>
    /// Whether <see cref="Backward"/> can also sum the columns of the dx it leaves (its dxColumnSums): LayerNorm can,
    /// RMSNorm cannot.
    /// </summary>
    bool SumsInputGradientColumns { get; }

    /// <summary>
    /// dx (N, C) += gradient from dy (N, C); parameter gradients accumulate. When <paramref name="dxColumnSums"/> (C) is
    /// given (only where <see cref="SumsInputGradientColumns"/>), it receives += the column sums of dx as left (after the
    /// accumulation): when dx is the residual-stream gradient, the bias gradient of the output projection it flows into.
    /// </summary>
    void Backward(in PassContext ctx, Tensor dy, Tensor dx, Tensor? dxColumnSums = null);
}
