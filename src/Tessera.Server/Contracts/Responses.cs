namespace Tessera.Server.Contracts;

// OpenAI's response objects as Tessera writes them. ServerJsonContext omits every null member (WhenWritingNull), a chunk's
// finish_reason and a choice's logprobs included, which OpenAI writes as null; the OpenAI SDK reads both forms.

public sealed record ErrorBody(string Message, string Type, string? Param, string? Code);
public sealed record ErrorResponse(ErrorBody Error);

public sealed record ModelCard(string Id, string Object, long Created, string OwnedBy, int MaxModelLen);
public sealed record ModelList(string Object, List<ModelCard> Data);

public sealed record PromptTokensDetails(int CachedTokens);
public sealed record UsageBody(int PromptTokens, int CompletionTokens, int TotalTokens, PromptTokensDetails? PromptTokensDetails);

public sealed record TopLogprobBody(string Token, double Logprob, List<int>? Bytes);
public sealed record TokenLogprobBody(string Token, double Logprob, List<int>? Bytes, List<TopLogprobBody> TopLogprobs);
public sealed record ChoiceLogprobs(List<TokenLogprobBody> Content);

public sealed record AssistantMessage(string Role, string? Content, List<ToolCallOut>? ToolCalls = null);
public sealed record ToolCallOut(string Id, string Type, ToolCallFunctionOut Function);
public sealed record ToolCallFunctionOut(string Name, string Arguments);
// A streamed call, OpenAI's way: the first delta of call k has its index, id, type and name with arguments "", the later
// ones only the index and the next piece of the arguments (the absent fields are null here, so they are not written).
public sealed record ToolCallDeltaOut(int Index, string? Id, string? Type, ToolCallFunctionDeltaOut Function);
public sealed record ToolCallFunctionDeltaOut(string? Name, string? Arguments);
public sealed record ChatChoice(int Index, AssistantMessage Message, ChoiceLogprobs? Logprobs, string? FinishReason);
public sealed record ChatCompletionBody(string Id, string Object, long Created, string Model, List<ChatChoice> Choices, UsageBody Usage);

public sealed record ChatDelta(string? Role, string? Content, List<ToolCallDeltaOut>? ToolCalls = null);
public sealed record ChatChunkChoice(int Index, ChatDelta Delta, ChoiceLogprobs? Logprobs, string? FinishReason);
public sealed record ChatCompletionChunk(string Id, string Object, long Created, string Model, List<ChatChunkChoice> Choices, UsageBody? Usage);

public sealed record CompletionLogprobs(List<string> Tokens, List<double> TokenLogprobs, List<Dictionary<string, double>> TopLogprobs, List<int> TextOffset);
public sealed record CompletionChoice(int Index, string Text, CompletionLogprobs? Logprobs, string? FinishReason);
public sealed record TextCompletionBody(string Id, string Object, long Created, string Model, List<CompletionChoice> Choices, UsageBody? Usage);
