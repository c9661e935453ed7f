namespace Tessera.Models.HuggingFace;

/// <summary>
/// A Hugging Face model file (config.json, a safetensors shard, the shard index) does not match what
/// Tessera can load: the message names the file and the field or tensor, e.g.
/// "config.json: n_head (12) must divide n_embd (770)".
/// </summary>
public sealed class HuggingFaceFormatException : Exception
{
    /// <summary>Creates the exception for <paramref name="path"/> with a description of the problem.</summary>
    public HuggingFaceFormatException(string path, string problem, Exception? inner = null)
        : base($"{path}: {problem}", inner)
    {
        FilePath = path;
        Problem = problem;
    }

    /// <summary>The file at fault.</summary>
    public string FilePath { get; }

    /// <summary>What is wrong, without the file name.</summary>
    public string Problem { get; }
}
