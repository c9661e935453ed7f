using Tessera.Tensors;

namespace Tessera.Models.HuggingFace;

/// <summary>A tensor held in host memory: a shape and its row-major F32 elements.</summary>
/// <param name="Shape">Dimensions.</param>
/// <param name="Data">Row-major elements; length product(Shape).</param>
public sealed record HostTensor(Shape Shape, float[] Data)
{
    /// <summary>Checks that the data length matches the shape.</summary>
    public HostTensor Validate() => Data.Length == Shape.NumElements ? this
        : throw new ArgumentException($"host tensor of shape {Shape} needs {Shape.NumElements} elements, has {Data.Length}");
}
