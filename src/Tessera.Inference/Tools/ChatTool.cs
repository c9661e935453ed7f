using System.Text.Json;

namespace Tessera.Inference.Tools;

/// <summary>A function the model may call: OpenAI's <c>tools[i].function</c>.</summary>
/// <param name="Name">The function's name (what a call names).</param>
/// <param name="Description">What it does, for the model; or null.</param>
/// <param name="Parameters">The JSON schema of its arguments (an object schema), or null for any object.</param>
public sealed record ChatTool(string Name, string? Description, JsonElement? Parameters);
