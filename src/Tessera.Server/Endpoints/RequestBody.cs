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
            string detail = e.Message.Split(" Path:", 2)[0].TrimEnd('.');
            string? field = e.Path is { Length: > 2 } path ? path[2..] : null;      // "$.messages[0].content" -> "messages[0].content"
            if (e.InnerException?.GetType().Name == "JsonReaderException")        // the reader's own exception: a syntax error
                throw new ApiException(ApiError.Invalid(
                    $"the request body is not valid JSON: {detail} (line {e.LineNumber + 1}, byte {e.BytePositionInLine})", null, "invalid_json"));
            string what = detail.Contains("could not be converted", StringComparison.Ordinal) ? "has the wrong type" : detail;
            throw new ApiException(ApiError.Invalid(field is null ? $"the request body {what}" : $"'{field}' {what}", field, "invalid_type"));
        }
    }
}
