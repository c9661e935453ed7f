namespace Tessera.Tensors.Cpu.Kernels;

/// <summary>
/// Walks two layouts of one shape row by row (the last dimension is the row), for copies and
/// casts between arbitrary strided views of any rank.
/// </summary>
internal static class StridedLoop
{
    /// <summary>
    /// Calls <paramref name="row"/>(sourceOffset, destinationOffset, rowLength, sourceRowStride,
    /// destinationRowStride) for every row of <paramref name="dims"/>; offsets and strides are in
    /// elements, offsets relative to each view's first element.
    /// Adjacent dimensions that are contiguous in both layouts are merged first, so contiguous
    /// views run as one long row.
    /// </summary>
    public static void ForEachRow(ReadOnlySpan<int> dims, ReadOnlySpan<long> sourceStrides, ReadOnlySpan<long> destinationStrides,
        Action<long, long, long, long, long> row)
    {
        // Merge dimensions: (size, sourceStride, destinationStride), skipping size-1 dimensions.
        var size = new List<long>(); var ss = new List<long>(); var ds = new List<long>();
        for (int i = 0; i < dims.Length; i++)
        {
            if (dims[i] == 0) return;
            if (dims[i] == 1) continue;
            int last = size.Count - 1;
            if (last >= 0 && ss[last] == sourceStrides[i] * dims[i] && ds[last] == destinationStrides[i] * dims[i])
            {
                size[last] *= dims[i]; ss[last] = sourceStrides[i]; ds[last] = destinationStrides[i];
            }
            else { size.Add(dims[i]); ss.Add(sourceStrides[i]); ds.Add(destinationStrides[i]); }
        }
        if (size.Count == 0) { row(0, 0, 1, 1, 1); return; }

        int rank = size.Count;
        long inner = size[rank - 1], sInner = ss[rank - 1], dInner = ds[rank - 1];
        var index = new long[rank - 1];
        long so = 0, dO = 0;
        while (true)
        {
            row(so, dO, inner, sInner, dInner);
            int d = rank - 2;
            for (; d >= 0; d--)
            {
                index[d]++; so += ss[d]; dO += ds[d];
                if (index[d] < size[d]) break;
                so -= ss[d] * size[d]; dO -= ds[d] * size[d]; index[d] = 0;
            }
            if (d < 0) return;
        }
    }
}
