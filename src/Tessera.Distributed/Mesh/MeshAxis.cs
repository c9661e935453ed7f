namespace Tessera.Distributed.Mesh;

/// <summary>An axis of a <see cref="DeviceMesh"/> (a mesh dimension, not a tensor dimension).</summary>
public enum MeshAxis
{
    /// <summary>Tensor parallel: ranks that split each layer's matrices (fastest-varying in the rank order).</summary>
    Tp,
    /// <summary>Context parallel: ranks that split the sequence.</summary>
    Cp,
    /// <summary>Data parallel: ranks that split the batch and reduce gradients.</summary>
    Dp,
    /// <summary>Pipeline parallel: ranks that hold consecutive stages of layers (slowest-varying).</summary>
    Pp,
}
