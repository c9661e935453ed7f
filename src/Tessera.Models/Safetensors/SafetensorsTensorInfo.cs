using Tessera.Tensors;

namespace Tessera.Models.Safetensors;

/// <summary>
/// One tensor's header entry: name, element type, shape and byte range inside the data region
/// (offsets relative to the first byte after the header, as in the file's "data_offsets").
/// </summary>
/// <param name="Name">Tensor name as stored in the file.</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Dimensions, row-major.</param>
/// <param name="Begin">First byte of the data, relative to the data region.</param>
/// <param name="End">One past the last byte, relative to the data region.</param>
public sealed record SafetensorsTensorInfo(string Name, DType DType, Shape Shape, long Begin, long End)
{
    /// <summary>Bytes of data (End - Begin).</summary>
    public long ByteLength => End - Begin;

    /// <summary>Number of elements (product of the shape; 1 for a scalar).</summary>
    public long NumElements => Shape.NumElements;
}
