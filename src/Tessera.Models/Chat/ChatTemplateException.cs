namespace Tessera.Models.Chat;

/// <summary>
/// A chat template that cannot be parsed or run: names the template, what is wrong and where (line and column of the
/// template text), e.g. "chat template of tokenizer_config.json: line 3, column 12: the filter 'wordcount' is not supported".
/// </summary>
public sealed class ChatTemplateException : Exception
{
    /// <summary>Creates the exception.</summary>
    public ChatTemplateException(string template, int line, int column, string problem)
        : base($"{template}: line {line}, column {column}: {problem}")
    {
        Line = line;
        Column = column;
        Problem = problem;
    }

    /// <summary>1-based line of the construct in the template text.</summary>
    public int Line { get; }

    /// <summary>1-based column.</summary>
    public int Column { get; }

    /// <summary>What is wrong, without the position.</summary>
    public string Problem { get; }
}
