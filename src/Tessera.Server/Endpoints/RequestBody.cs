using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Microsoft.AspNetCore.Http;

namespace Tessera.Server.Endpoints;

/// <summary>Reads a JSON request body into its contract, turning every malformed or mistyped input into a 400 that says where.</summary>
internal static class RequestBody
{
    public static async Task<T> ReadAsync<T>(HttpContext context, JsonTypeInfo<T> type) where T : class
    {
        if (context.Request.ContentType is { } contentType && !contentType.StartsWith("application/json", StringComparison.OrdinalIgnoreCase))
            throw new ApiException(ApiError.Invalid($"Content-Type is '{contentType}'; send the body as application/json", null, "invalid_content_type"));
        try
        {
            return await JsonSerializer.DeserializeAsync(context.Request.Body, type, context.RequestAborted).ConfigureAwait(false)
                ?? throw new ApiException(ApiError.Invalid("the request body is JSON null; send an object", null, "invalid_json"));
        }
        catch (JsonException e)
        {
            // e.Path names the field ($.messages[0].content); the message of a converter says what it wanted.
            string where = string.IsNullOrEmpty(e.Path) || e.Path == "$" ? "the request body" : e.Path![2..];
            string what = e.Message.Contains("could not be converted", StringComparison.Ordinal)
                ? "has the wrong type" : e.Message.Split(" Path:", 2)[0].TrimEnd('.');
            string message = e.Path is null or "$" && e.LineNumber is not null && !e.Message.Contains("could not be converted", StringComparison.Ordinal)
                ? $"the request body is not valid JSON: {what} (line {e.LineNumber + 1}, byte {e.BytePositionInLine})"
                : $"'{where}' {what}";
            throw new ApiException(ApiError.Invalid(message, e.Path is { Length: > 2 } ? where : null, "invalid_json"));
        }
    }
}
