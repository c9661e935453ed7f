using System.Text.Json.Serialization;

namespace Tessera.Server.Contracts;

/// <summary>Source-generated System.Text.Json contracts for the OpenAI wire types (snake_case, no reflection at run time).</summary>
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    NumberHandling = JsonNumberHandling.Strict, AllowTrailingCommas = false, ReadCommentHandling = System.Text.Json.JsonCommentHandling.Disallow)]
[JsonSerializable(typeof(ChatCompletionRequestBody))]
[JsonSerializable(typeof(CompletionRequestBody))]
[JsonSerializable(typeof(ErrorResponse))]
[JsonSerializable(typeof(LoadLoraAdapterRequestBody))]
[JsonSerializable(typeof(UnloadLoraAdapterRequestBody))]
[JsonSerializable(typeof(ModelList))]
[JsonSerializable(typeof(ChatCompletionBody))]
[JsonSerializable(typeof(ChatCompletionChunk))]
[JsonSerializable(typeof(TextCompletionBody))]
[JsonSerializable(typeof(ResponseRequestBody))]
[JsonSerializable(typeof(ResponseBody))]
[JsonSerializable(typeof(ResponseStreamEvent))]
[JsonSerializable(typeof(ResponseDeletedBody))]
public sealed partial class ServerJsonContext : JsonSerializerContext;
