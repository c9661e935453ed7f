namespace Tessera.Tensors;

/// <summary>
/// A backend that picks a product's algorithm by timing candidates the first time it sees a row count, and lets every row
/// count of a bucket share what the bucket's first one timed (the CUDA backend and cuBLASLt). Timing makes the host wait for
/// the device, so a server runs one forward at each of these row counts before it serves: its steps, whose row counts change
/// with every mix of prefill chunks and decode rows, then find every bucket timed.
/// </summary>
public interface IMatMulRowBuckets
{
    /// <summary>
    /// One row count per bucket up to <paramref name="maxRows"/> (each bucket's largest, or <paramref name="maxRows"/> for the
    /// last), ascending; empty when the backend does not time its products.
    /// </summary>
    IReadOnlyList<int> TimedRowCounts(int maxRows);
}
