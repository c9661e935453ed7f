namespace Tessera.Models.HuggingFace;

/// <summary>How Hugging Face tensors become one Tessera parameter (and back, for export).</summary>
public enum WeightTransform
{
    /// <summary>Same shape, same order.</summary>
    Identity,
    /// <summary>A 2-D matrix stored (in, out), as GPT-2's Conv1D does; Tessera stores Linear weights (out, in).</summary>
    Transpose,
    /// <summary>Several (rows_j, C) matrices stacked by rows in the order listed (Llama q, k, v into qkv).</summary>
    ConcatRows,
    /// <summary>(V, C) rows followed by zero rows up to Tessera's padded vocabulary (Vpad, C); export keeps the first V rows.</summary>
    PadRows,
    /// <summary>
    /// Rows [offset, offset + rows) of one larger tensor that several parameters share (Phi-3's gate_up_proj: the gate the
    /// first F rows, the up projection the next F; <see cref="WeightMapRow.SourceRowOffset"/>); export writes each parameter
    /// back into its rows of the shared tensor.
    /// </summary>
    RowBlock,
}
