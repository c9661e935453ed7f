using Tessera.Tensors;

namespace Tessera.Nn.Parallel;

/// <summary>
/// A term a <see cref="RowParallelLinear"/> adds to its rank's partial output before its reduction sums the ranks (served LoRA
/// adapters over a row-parallel layer: each rank's low-rank term from its own input slice), so that the term is summed by the
/// layer's existing collective rather than one of its own.
/// </summary>
internal interface IPartialOutputTerm
{
    /// <summary><paramref name="partial"/> (N, out), this rank's partial sum, += the term of this rank's input slice <paramref name="x"/> (N, in / tp).</summary>
    void AddTo(in PassContext ctx, Tensor x, Tensor partial);
}
