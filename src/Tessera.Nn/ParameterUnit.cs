namespace Tessera.Nn;

/// <summary>
/// A unit of a model's parameters: a contiguous arena range [<paramref name="Start"/>, <paramref name="End"/>) of whole
/// parameters that one pass reads together (a transformer's embeddings, one block, or the final norm and head). It is the
/// model's one description of its structure: the pass hooks number units, ZeRO-3 gathers and reduce-scatters by unit,
/// gradient buckets and pipeline stages are cut at unit boundaries.
/// </summary>
/// <param name="Index">Position in the model's order (0 first).</param>
/// <param name="Name">Name for messages ("embeddings", "blocks.3", "head").</param>
/// <param name="Start">First arena element.</param>
/// <param name="End">One past the last arena element (the next unit's start, alignment padding included).</param>
/// <param name="FirstParameter">Index of the unit's first parameter in declaration order.</param>
/// <param name="ParameterCount">Number of parameters declared in the unit.</param>
/// <param name="Borrows">Other units whose parameters this unit's layers also read and write (a head tied to the token
/// embedding borrows the embeddings unit); empty for most.</param>
public sealed record ParameterUnit(int Index, string Name, long Start, long End, int FirstParameter, int ParameterCount, IReadOnlyList<int> Borrows)
{
    /// <summary>Elements of the unit's arena range.</summary>
    public long Length => End - Start;
}
