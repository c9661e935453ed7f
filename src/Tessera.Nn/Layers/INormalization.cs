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

    /// <summary>dx (N, C) += gradient from dy (N, C); parameter gradients accumulate.</summary>
    void Backward(in PassContext ctx, Tensor dy, Tensor dx);
}
