namespace Tessera.Training.Data;

/// <summary>One document of a text corpus and where it came from ("file" or "file:line").</summary>
/// <param name="Text">The document's text.</param>
/// <param name="Source">Its file, and line for jsonl, for messages.</param>
public readonly record struct CorpusDocument(string Text, string Source);
