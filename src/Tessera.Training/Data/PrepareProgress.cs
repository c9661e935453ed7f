namespace Tessera.Training.Data;

/// <summary>How far <see cref="ShardPreparation.Prepare"/> has come (reported after each document and once at the end).</summary>
/// <param name="BytesRead">Bytes of the input files consumed so far.</param>
/// <param name="TotalBytes">Bytes of all input files.</param>
/// <param name="Documents">Documents tokenized so far.</param>
/// <param name="Tokens">Tokens produced so far (delimiters included).</param>
public readonly record struct PrepareProgress(long BytesRead, long TotalBytes, long Documents, long Tokens);
