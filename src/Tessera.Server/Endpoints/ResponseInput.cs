using System.Text;
using System.Text.Json;
using Tessera.Models.Chat;

namespace Tessera.Server.Endpoints;

/// <summary>
/// The Responses API's input as the chat template's messages: instructions first as a system message, then the input, a string
/// (one user message) or a list of items: messages (role user, system, developer or assistant; content a string or a list of
/// input_text / output_text parts), function_call items (joined to the assistant turn before them, as chat's tool_calls) and
/// function_call_output items (a tool turn answering call_id), after the stored conversation a previous_response_id continues.
/// Anything else is a 400 naming the item.
/// </summary>
internal static class ResponseInput
{
    private static readonly HashSet<string> Roles = ["system", "developer", "user", "assistant"];

    public static List<ChatMessage> Messages(JsonElement? input, string? instructions, IReadOnlyList<ChatMessage> history)
    {
        var messages = new List<ChatMessage>();
        if (!string.IsNullOrEmpty(instructions)) messages.Add(new ChatMessage("system", instructions));
        messages.AddRange(history);
        if (input is not { } items || items.ValueKind == JsonValueKind.Null)
            throw new ApiException(ApiError.Invalid("you must provide 'input'", "input", "missing_required_parameter"));
        if (items.ValueKind == JsonValueKind.String)
        {
            messages.Add(new ChatMessage("user", items.GetString()!));
            return messages;
        }
        if (items.ValueKind != JsonValueKind.Array)
            throw new ApiException(ApiError.Invalid("'input' has the wrong type: give a string or a list of input items", "input", "invalid_type"));
        int i = 0;
        foreach (var item in items.EnumerateArray())
        {
            string at = $"input[{i++}]";
            if (item.ValueKind != JsonValueKind.Object) throw Invalid($"{at} must be an object", at);
            string type = OptionalString(item, "type", at) ?? "message";     // an EasyInputMessage has no type
            switch (type)
            {
                case "message":
                    string role = OptionalString(item, "role", at) ?? "";
                    if (!Roles.Contains(role)) throw Invalid($"{at}.role is '{role}'; expected one of {string.Join(", ", Roles)}", $"{at}.role");
                    // "developer" is OpenAI's newer name for the system turn; templates know "system".
                    messages.Add(new ChatMessage(role == "developer" ? "system" : role, Content(item, at)));
                    break;
                case "function_call":
                    var call = new ChatToolCall(RequiredString(item, "call_id", at), RequiredString(item, "name", at), OptionalString(item, "arguments", at) ?? "{}");
                    // Consecutive calls (and a call after the assistant's text) are one assistant turn, as chat's tool_calls are.
                    if (messages.Count > 0 && messages[^1] is { Role: "assistant" } last)
                        messages[^1] = last with { ToolCalls = [.. last.ToolCalls ?? [], call] };
                    else messages.Add(new ChatMessage("assistant", "") { ToolCalls = [call] });
                    break;
                case "function_call_output":
                    string callId = RequiredString(item, "call_id", at);
                    messages.Add(new ChatMessage("tool", Output(item, at)) { ToolCallId = callId });
                    break;
                default:
                    throw Invalid($"{at}.type '{type}' is not supported; give message, function_call or function_call_output items", $"{at}.type");
            }
        }
        if (messages.Count == 0 || messages.All(m => m.Role == "system"))
            throw new ApiException(ApiError.Invalid("'input' holds no message", "input"));
        return messages;
    }

    /// <summary>A message's content: a string, or text parts (input_text, output_text, text) joined.</summary>
    private static string Content(JsonElement item, string at)
    {
        if (!item.TryGetProperty("content", out var content)) throw Invalid($"{at}.content is missing", $"{at}.content", "missing_required_parameter");
        return Text(content, $"{at}.content");
    }

    /// <summary>A function_call_output's output: a string, or text parts joined.</summary>
    private static string Output(JsonElement item, string at)
    {
        if (!item.TryGetProperty("output", out var output)) throw Invalid($"{at}.output is missing", $"{at}.output", "missing_required_parameter");
        return Text(output, $"{at}.output");
    }

    /// <summary>Text given as a string or as a list of text parts (joined); anything else is a 400 naming <paramref name="at"/>.</summary>
    private static string Text(JsonElement value, string at)
    {
        if (value.ValueKind == JsonValueKind.String) return value.GetString()!;
        if (value.ValueKind != JsonValueKind.Array) throw Invalid($"{at} must be a string or a list of content parts", at, "invalid_type");
        var text = new StringBuilder();
        int j = 0;
        foreach (var part in value.EnumerateArray())
        {
            string partAt = $"{at}[{j++}]";
            if (part.ValueKind != JsonValueKind.Object) throw Invalid($"{partAt} must be an object", partAt, "invalid_type");
            string? type = OptionalString(part, "type", partAt);
            if (type is not ("input_text" or "output_text" or "text"))
                throw Invalid($"{partAt}.type '{type}' is not supported (only input_text and output_text: this server reads text)", $"{partAt}.type");
            text.Append(RequiredString(part, "text", partAt));
        }
        return text.ToString();
    }

    private static string RequiredString(JsonElement item, string name, string at) =>
        OptionalString(item, name, at) ?? throw Invalid($"{at}.{name} is missing", $"{at}.{name}", "missing_required_parameter");

    private static string? OptionalString(JsonElement item, string name, string at)
    {
        if (!item.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) return null;
        return value.ValueKind == JsonValueKind.String ? value.GetString()
            : throw Invalid($"'{at}.{name}' has the wrong type: expected a string", $"{at}.{name}", "invalid_type");
    }

    private static ApiException Invalid(string message, string param, string code = "invalid_value") => new(ApiError.Invalid(message, param, code));
}
