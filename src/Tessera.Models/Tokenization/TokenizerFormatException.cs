namespace Tessera.Models.Tokenization;

/// <summary>A tokenizer file is missing, malformed or of an unsupported kind; the message names the file.</summary>
public sealed class TokenizerFormatException(string path, string problem, Exception? inner = null)
    : Exception($"{path}: {problem}", inner)
{
    /// <summary>The file (or directory) at fault.</summary>
    public string FilePath { get; } = path;
}
