namespace Tessera.Models.Safetensors;

/// <summary>
/// A safetensors file (or a tensor set about to be written as one) breaks the format: the message names
/// the file and what is wrong, e.g. "model.safetensors: tensor 'wte' data [16, 400) overlaps the previous tensor".
/// </summary>
public sealed class SafetensorsFormatException : Exception
{
    /// <summary>Creates the exception for <paramref name="path"/> with a description of the problem.</summary>
    public SafetensorsFormatException(string path, string problem, Exception? inner = null)
        : base($"{path}: {problem}", inner)
    {
        FilePath = path;
        Problem = problem;
    }

    /// <summary>The file that is malformed (or was being written).</summary>
    public string FilePath { get; }

    /// <summary>What is wrong, without the file name.</summary>
    public string Problem { get; }
}
