namespace Tessera.Inference.Serving;

/// <summary>A request the engine cannot serve as asked (OpenAI's invalid_request_error, HTTP 400); names the parameter.</summary>
public sealed class InvalidRequestException : Exception
{
    /// <summary>Creates the exception; <paramref name="parameter"/> is the request field at fault (e.g. "max_tokens").</summary>
    public InvalidRequestException(string message, string? parameter, string code = "invalid_value") : base(message)
    {
        Parameter = parameter;
        Code = code;
    }

    /// <summary>The request field at fault, or null.</summary>
    public string? Parameter { get; }

    /// <summary>A machine-readable code, e.g. "context_length_exceeded".</summary>
    public string Code { get; }
}
