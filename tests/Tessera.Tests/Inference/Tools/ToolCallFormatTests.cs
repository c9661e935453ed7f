using System.Text.Json;
using Microsoft.Extensions.AI;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Inference.Tools;
using Tessera.Models.Chat;
using Tessera.Models.Tokenization;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Inference.Tools;

/// <summary>
/// The tool-call format follows the chat template: Llama 3.1's bare JSON call (<c>{"name", "parameters"}</c>, perhaps after
/// &lt;|python_tag|&gt;) for a template that reads tools and speaks of ipython, the Hermes tags otherwise; a forced call in the
/// Llama form is the reply's JSON itself, through Microsoft.Extensions.AI in process.
/// </summary>
public class ToolCallFormatTests
{
    // A template in the manner of Llama 3.1's (written for this test): tools as JSON in the user turn, ipython for tool replies.
    private const string LlamaLike =
        "{% for m in messages %}<|start_header_id|>{% if m.role == 'tool' %}ipython{% else %}{{ m.role }}{% endif %}<|end_header_id|>\n\n" +
        "{% if tools and m.role == 'user' %}Functions: {% for t in tools %}{{ t | tojson }}{% endfor %}\nReply with {\"name\": function name, \"parameters\": arguments}.\n{% endif %}" +
        "{% if m.tool_calls %}{% for c in m.tool_calls %}{\"name\": \"{{ c.function.name }}\", \"parameters\": {{ c.function.arguments | tojson }}}{% endfor %}{% else %}{{ m.content }}{% endif %}<|eot_id|>" +
        "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

    private static int _ids;

    private static string NewId() => "call_" + Interlocked.Increment(ref _ids);

    [Fact]
    public void TheFormatFollowsTheTemplate()
    {
        Assert.Same(ToolCallFormat.LlamaJson, ToolCallFormat.For(ChatTemplate.Parse(LlamaLike)));
        Assert.Same(ToolCallFormat.Hermes, ToolCallFormat.For(ChatTemplate.Fallback));
        Assert.Same(ToolCallFormat.Hermes, ToolCallFormat.For(ChatTemplate.Parse("{% for t in tools %}<tool_call>{{ t | tojson }}{% endfor %}ipython")));
    }

    [Theory]
    [InlineData("{\"name\": \"get_time\", \"parameters\": {\"zone\": \"UTC\"}}", true)]
    [InlineData("<|python_tag|>{\"name\": \"get_time\", \"parameters\": {\"zone\": \"UTC\"}}", true)]
    [InlineData("  {\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}\n", true)]
    [InlineData("It is noon.", false)]
    [InlineData("{\"zone\": \"UTC\"}", false)]                                       // JSON, but not a call
    public void LlamasCallIsTheWholeReply(string text, bool call)
    {
        var (content, calls) = ToolCallFormat.LlamaJson.Parse(text, forced: false, NewId);
        if (!call) { Assert.Empty(calls); Assert.Equal(text.Trim(), content); return; }
        var c = Assert.Single(calls);
        Assert.Null(content);
        Assert.Equal("get_time", c.Name);
        Assert.Equal("UTC", JsonDocument.Parse(c.Arguments).RootElement.GetProperty("zone").GetString());
    }

    /// <summary>Mistral's list after [TOOL_CALLS], its nine-character call ids, and a forced call's text (the object the prompt's "[TOOL_CALLS] [" opened).</summary>
    [Fact]
    public void MistralsCallsAreTheListAfterItsTag()
    {
        Assert.Same(ToolCallFormat.Mistral, ToolCallFormat.For(ChatTemplate.Parse("{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}{% endif %}[TOOL_CALLS]")));
        var mistral = ToolCallFormat.Mistral;
        var (content, calls) = mistral.Parse("[TOOL_CALLS] [{\"name\": \"get_time\", \"arguments\": {\"utc\": true}}, {\"name\": \"get_date\", \"arguments\": {}}]",
            forced: false, mistral.NewCallId);
        Assert.Null(content);
        Assert.Equal(["get_time", "get_date"], calls.Select(c => c.Name));
        Assert.All(calls, c => Assert.Matches("^[A-Za-z0-9]{9}$", c.Id));
        var forced = mistral.Parse("{\"name\": \"get_time\", \"arguments\": {\"utc\": false}}", forced: true, mistral.NewCallId);
        Assert.Equal("get_time", Assert.Single(forced.Calls).Name);
        Assert.Equal("plain text", mistral.Parse("plain text", forced: false, mistral.NewCallId).Content);
        Assert.Equal(4, mistral.Streamable("Hi, [TOOL"));
        Assert.Equal("[TOOL_CALLS] [", mistral.ForcedOpening);
    }

    [Theory]
    [InlineData("hermes", "Hello", 5)]
    [InlineData("hermes", "Hello <tool", 6)]                  // what could begin a tag is held back
    [InlineData("hermes", "Hello <tool_call>{\"na", 6)]      // a call from its tag on
    [InlineData("hermes", "a < b", 5)]
    [InlineData("llama3-json", "It is", 5)]                   // a reply that began as text is text
    [InlineData("llama3-json", "  {\"name\"", 0)]           // one that may be a call is held
    [InlineData("llama3-json", "<|py", 0)]
    [InlineData("llama3-json", " ", 0)]
    public void WhatMayStreamBeforeACallCouldBegin(string format, string text, int streamable)
    {
        var f = format == "hermes" ? ToolCallFormat.Hermes : ToolCallFormat.LlamaJson;
        Assert.Equal(format, f.Name);
        Assert.Equal(streamable, f.Streamable(text));
    }

    [Fact]
    public async Task AForcedLlamaCallIsTheRepliesJsonInProcess()
    {
        var cpu = new CpuBackend(1);
        var model = Tessera.Tests.Inference.ByteModels.Random(cpu, "llama-debug", seed: 4, context: 1024);
        using var engine = new InferenceEngine(model, new ByteTokenizer(), new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = 8 << 20 },
            Scheduler = new SchedulerOptions { MaxBatch = 4, TokenBudget = 256 },
        });
        var prompt = new ChatPrompt(new ChatFormat(ChatTemplate.Parse(LlamaLike), null, "<|eot_id|>", false), new ByteTokenizer());
        Assert.Same(ToolCallFormat.LlamaJson, prompt.ToolCalls);
        IChatClient client = new TesseraChatClient(engine, prompt, "llama-like");
        var tool = AIFunctionFactory.Create((bool utc) => utc ? "12:00" : "13:00", "get_time", "The time.");
        var options = new ChatOptions { MaxOutputTokens = 60, Temperature = 0, Tools = [tool], ToolMode = ChatToolMode.RequireAny };
        var response = await client.GetResponseAsync("What time is it?", options, TestContext.Current.CancellationToken);
        var call = Assert.Single(response.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
        Assert.Equal("get_time", call.Name);
        Assert.True(call.Arguments!.ContainsKey("utc"));
        Assert.Equal(Microsoft.Extensions.AI.ChatFinishReason.ToolCalls, response.FinishReason);
        // The rendered prompt of a forced Llama call opens nothing: the JSON is the reply.
        var rendered = prompt.Render([new Tessera.Models.Chat.ChatMessage("user", "What time is it?")], [new ChatTool("get_time", null, null)], forceCall: true);
        Assert.EndsWith("<|start_header_id|>assistant<|end_header_id|>\n\n", rendered);
    }
}
