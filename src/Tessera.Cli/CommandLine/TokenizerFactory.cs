using Tessera.Models.Tokenization;

namespace Tessera.Cli.CommandLine;

/// <summary>Creates the tokenizer named by a --tokenizer option: "byte" or a Hugging Face directory.</summary>
public static class TokenizerFactory
{
    /// <summary>"byte" gives the byte-level tokenizer; anything else is a directory with tokenizer files.</summary>
    public static ITokenizer Create(string spec)
    {
        if (spec == "byte") return new ByteTokenizer();
        if (!Directory.Exists(spec))
            throw new UsageException($"--tokenizer {spec}: not 'byte' and not a directory with tokenizer files (vocab.json + merges.txt, tokenizer.json or a tiktoken file)");
        return TokenizerLoader.FromDirectory(spec);
    }
}
