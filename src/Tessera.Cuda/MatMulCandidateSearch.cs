namespace Tessera.Cuda;

/// <summary>
/// Which cuBLASLt algorithms the timed choice (<see cref="CudaBackendOptions.TuneMatMulAlgorithms"/>) tries for a decode-size
/// product (at most 256 rows: a serving step's batch), which streams its whole weight for a few rows and is bound by how many
/// SMs its grid keeps reading. Larger products always time the heuristic's candidates alone.
/// </summary>
public enum MatMulCandidateSearch
{
    /// <summary>The heuristic's candidates only (8 at most).</summary>
    Heuristic,

    /// <summary>
    /// The heuristic's candidates, and each of them that supports it split over K into 2, 3, 4, 6, 8, 12 and 16 parts with the
    /// partial sums reduced in F32 (cuBLASLt's COMPUTE_TYPE reduction scheme: deterministic, no rounding to 16 bits between
    /// parts): a 2048-wide product of 64 rows has 16 output tiles of 128 columns, a wave of 16 SMs out of 132 unless K is split.
    /// </summary>
    SplitK,

    /// <summary>
    /// <see cref="SplitK"/>'s candidates, and every algorithm cuBLASLt lists for the types (cublasLtMatmulAlgoGetIds) at each of
    /// its tiles, whole and split as above, that cuBLASLt accepts for the shape (cublasLtMatmulAlgoCheck), up to 512 in all.
    /// Slower to tune (each is timed from a cold L2); for measurements.
    /// </summary>
    AllAlgorithms,
}
