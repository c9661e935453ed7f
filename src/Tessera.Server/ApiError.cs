using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Tessera.Server.Contracts;

namespace Tessera.Server;

/// <summary>An OpenAI-style error response: status, message, type, the parameter at fault and a code.</summary>
public sealed record ApiError(int Status, string Message, string Type, string? Param = null, string? Code = null)
{
    /// <summary>400 invalid_request_error.</summary>
    public static ApiError Invalid(string message, string? param = null, string? code = "invalid_value") =>
        new(StatusCodes.Status400BadRequest, message, "invalid_request_error", param, code);

    /// <summary>Writes the error as the response (JSON body; Retry-After for 429).</summary>
    public async Task WriteAsync(HttpContext context, int? retryAfterSeconds = null)
    {
        if (context.Response.HasStarted) return;                        // mid-stream: nothing can be said any more
        context.Response.StatusCode = Status;
        if (retryAfterSeconds is int seconds) context.Response.Headers.RetryAfter = seconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
        context.Response.ContentType = "application/json";
        var body = JsonSerializer.Serialize(new ErrorResponse(new ErrorBody(Message, Type, Param, Code)), ServerJsonContext.Default.ErrorResponse);
        await context.Response.WriteAsync(body, context.RequestAborted).ConfigureAwait(false);
    }
}

/// <summary>An error detected while handling a request, carried to the response.</summary>
public sealed class ApiException(ApiError error) : Exception(error.Message)
{
    /// <summary>The error to send.</summary>
    public ApiError Error { get; } = error;
}
