using System.Text.Json;
using Tessera.Models.Chat;
using Xunit;

namespace Tessera.Tests.Models.Chat;

/// <summary>The chat-template interpreter against the texts transformers renders for real models' templates.</summary>
public class ChatTemplateTests
{
    private static readonly JsonElement Doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Models", "Chat", "Data", "chat_templates.json"))).RootElement;

    public static TheoryData<string> Cases()
    {
        var data = new TheoryData<string>();
        foreach (var c in Doc.GetProperty("cases").EnumerateArray()) data.Add(c.GetProperty("name").GetString()!);
        return data;
    }

    private static (JsonElement Case, List<ChatMessage> Messages) Load(string name)
    {
        var c = Doc.GetProperty("cases").EnumerateArray().Single(x => x.GetProperty("name").GetString() == name);
        var messages = Doc.GetProperty("messages").EnumerateArray()
            .Select(m => new ChatMessage(m.GetProperty("role").GetString()!, m.GetProperty("content").GetString()!)).ToList();
        if (!c.GetProperty("system").GetBoolean()) messages.RemoveAt(0);
        return (c, messages);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void RendersTheTextTransformersRenders(string name)
    {
        var (c, messages) = Load(name);
        var template = ChatTemplate.Parse(c.GetProperty("template").GetString()!, name);
        string? Token(string field) => c.GetProperty(field).ValueKind == JsonValueKind.Null ? null : c.GetProperty(field).GetString();
        Assert.Equal(c.GetProperty("expected").GetString(), template.Render(messages, true, Token("bos_token"), Token("eos_token")));
    }

    [Fact]
    public void TemplateRaisingAnExceptionReportsItsMessage()
    {
        var (c, messages) = Load("mistral (mistralai/Mistral-7B-Instruct-v0.1)");
        var template = ChatTemplate.Parse(c.GetProperty("template").GetString()!, "mistral");
        var e = Assert.Throws<ChatTemplateException>(() => template.Render([messages[0], messages[0]]));
        Assert.Contains("Conversation roles must alternate", e.Message);
    }

    [Theory]
    [InlineData("Hello {% macro m() %}x{% endmacro %}", 1, 10, "the statement 'macro' is not supported")]
    [InlineData("{% for m in messages %}\n{{ m.content | wordcount }}{% endfor %}", 2, 16, "the filter 'wordcount' is not supported")]
    [InlineData("{{ messages | length }}\n{{ cycler(1, 2) }}", 2, 4, "the function 'cycler' is not supported")]
    [InlineData("{% if true %}never closed", 1, 14, "the template ends inside a block")]
    [InlineData("{{ m.content.encode() }}", 1, 13, "the method 'encode' is not supported")]
    public void UnsupportedConstructIsReportedAtParseNamingItAndItsPosition(string source, int line, int column, string problem)
    {
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(source, "test template"));
        Assert.StartsWith("test template: line ", e.Message);
        Assert.Contains(problem, e.Problem);
        if (!problem.StartsWith("the template ends", StringComparison.Ordinal)) Assert.Equal((line, column), (e.Line, e.Column));
    }

    /// <summary>
    /// Qwen3's chat template without its tools branch (written here from the released template's constructs: a namespace
    /// updated in a reversed loop to find the last user query, is string tests, startswith/endswith, splitting the thinking
    /// out of earlier assistant turns with split, rstrip, lstrip and strip with arguments, enable_thinking is defined and is
    /// false). Earlier turns lose their thinking, the last one keeps it, and enable_thinking = false opens an empty block.
    /// </summary>
    [Fact]
    public void AShortenedQwen3TemplateRendersItsThinkingRules()
    {
        const string source = """
            {%- if messages[0].role == 'system' %}
                {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
            {%- endif %}
            {%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
            {%- for message in messages[::-1] %}
                {%- set index = (messages|length - 1) - loop.index0 %}
                {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
                    {%- set ns.multi_step_tool = false %}
                    {%- set ns.last_query_index = index %}
                {%- endif %}
            {%- endfor %}
            {%- for message in messages %}
                {%- if message.content is string %}
                    {%- set content = message.content %}
                {%- else %}
                    {%- set content = '' %}
                {%- endif %}
                {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
                    {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
                {%- elif message.role == "assistant" %}
                    {%- set reasoning_content = '' %}
                    {%- if message.reasoning_content is string %}
                        {%- set reasoning_content = message.reasoning_content %}
                    {%- else %}
                        {%- if '</think>' in content %}
                            {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
                        {%- endif %}
                    {%- endif %}
                    {%- if loop.index0 > ns.last_query_index %}
                        {%- if loop.last or (not loop.last and reasoning_content) %}
                            {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
                        {%- else %}
                            {{- '<|im_start|>' + message.role + '\n' + content }}
                        {%- endif %}
                    {%- else %}
                        {{- '<|im_start|>' + message.role + '\n' + content }}
                    {%- endif %}
                    {{- '<|im_end|>\n' }}
                {%- endif %}
            {%- endfor %}
            {%- if add_generation_prompt %}
                {{- '<|im_start|>assistant\n' }}
                {%- if enable_thinking is defined and enable_thinking is false %}
                    {{- '<think>\n\n</think>\n\n' }}
                {%- endif %}
            {%- endif %}
            """;
        var template = ChatTemplate.Parse(source, "qwen3 template");
        ChatMessage[] conversation =
        [
            new("system", "You are terse."), new("user", "Hi"), new("assistant", "<think>\nGreet back.\n</think>\n\nHello."), new("user", "And?"),
        ];
        Assert.Equal(
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n" +
            "<|im_start|>user\nAnd?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
            template.Render(conversation, variables: new Dictionary<string, object?> { ["enable_thinking"] = false }));
        Assert.Equal(
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nGreet back.\n</think>\n\nHello.<|im_end|>\n",
            template.Render(conversation[1..3], addGenerationPrompt: false));
        Assert.EndsWith("<|im_start|>assistant\n", template.Render(conversation));   // thinking left on: no empty block
    }

    /// <summary>
    /// Gemma 3's chat template as released (its text and image branches; Gemma 2's is the same without the system prefix): the
    /// bos token, a system message folded into the first user turn, assistant turns as "model", content trimmed, roles checked
    /// to alternate with loop.index0 and raise_exception.
    /// </summary>
    [Fact]
    public void GemmasTemplateRendersTurnsAndRefusesRolesThatDoNotAlternate()
    {
        const string source = """
            {{ bos_token }}
            {%- if messages[0]['role'] == 'system' -%}
                {%- if messages[0]['content'] is string -%}
                    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
                {%- else -%}
                    {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
                {%- endif -%}
                {%- set loop_messages = messages[1:] -%}
            {%- else -%}
                {%- set first_user_prefix = "" -%}
                {%- set loop_messages = messages -%}
            {%- endif -%}
            {%- for message in loop_messages -%}
                {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
                    {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
                {%- endif -%}
                {%- if (message['role'] == 'assistant') -%}
                    {%- set role = "model" -%}
                {%- else -%}
                    {%- set role = message['role'] -%}
                {%- endif -%}
                {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
                {%- if message['content'] is string -%}
                    {{ message['content'] | trim }}
                {%- elif message['content'] is iterable -%}
                    {%- for item in message['content'] -%}
                        {%- if item['type'] == 'image' -%}
                            {{ '<start_of_image>' }}
                        {%- elif item['type'] == 'text' -%}
                            {{ item['text'] | trim }}
                        {%- endif -%}
                    {%- endfor -%}
                {%- else -%}
                    {{ raise_exception("Invalid content type") }}
                {%- endif -%}
                {{ '<end_of_turn>\n' }}
            {%- endfor -%}
            {%- if add_generation_prompt -%}
                {{'<start_of_turn>model\n'}}
            {%- endif -%}
            """;
        var template = ChatTemplate.Parse(source, "gemma template");
        ChatMessage[] conversation = [new("system", "Be brief."), new("user", " Hi "), new("assistant", "Hello."), new("user", "And?")];
        Assert.Equal(
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n" +
            "<start_of_turn>user\nAnd?<end_of_turn>\n<start_of_turn>model\n",
            template.Render(conversation, bosToken: "<bos>"));
        Assert.Equal("<start_of_turn>user\nHi<end_of_turn>\n", template.Render(conversation[1..2], addGenerationPrompt: false));
        var e = Assert.Throws<ChatTemplateException>(() => template.Render([new("user", "a"), new("user", "b")]));
        Assert.Contains("Conversation roles must alternate", e.Message);
    }

    [Fact]
    public void ExpressionsFollowPythonAndJinjaSemantics()
    {
        var template = ChatTemplate.Parse(
            "{{ (7 // 2) ~ '|' ~ (-7 % 3) ~ '|' ~ [1, 2, 3][::-1] ~ '|' ~ {'a': 1}|tojson ~ '|' ~ ('x' if none is none else 'y') ~ '|' ~ 'a,b'.split(',')|join('+') }}" +
            "{% set ns = namespace(n=0) %}{% for i in range(3) if i != 1 %}{% set ns.n = ns.n + i %}{% endfor %}|{{ ns.n }}{{ '|' ~ (undefined_thing is defined) ~ '|' ~ ('b' in 'abc') }}");
        Assert.Equal("3|2|[3, 2, 1]|{\"a\": 1}|x|a+b|2|False|True", template.Render([]));
    }

    [Fact]
    public void ChatFormatReadsTemplateAndTokenTextsFromTokenizerConfig()
    {
        var dir = Directory.CreateTempSubdirectory("tessera-chat-");
        try
        {
            File.WriteAllText(Path.Combine(dir.FullName, "tokenizer_config.json"),
                """{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"}]}""");
            var format = ChatFormat.Load(dir.FullName);
            Assert.False(format.IsFallback);
            Assert.Equal("<s>hi", format.Template.Render([new ChatMessage("user", "hi")], true, format.BosToken, format.EosToken));
            Assert.Equal(["</s>"], format.StopStrings);

            File.WriteAllText(Path.Combine(dir.FullName, "tokenizer_config.json"), """{"chat_template": "{% filter upper %}x{% endfilter %}"}""");
            var e = Assert.Throws<ChatTemplateException>(() => ChatFormat.Load(dir.FullName));
            Assert.Contains("tokenizer_config.json: chat_template: line 1, column 4: the statement 'filter' is not supported", e.Message);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void DirectoryWithoutTemplateGetsTheDocumentedChatMlFallback()
    {
        var dir = Directory.CreateTempSubdirectory("tessera-chat-");
        try
        {
            var format = ChatFormat.Load(dir.FullName);
            Assert.True(format.IsFallback);
            Assert.Equal("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", format.Template.Render([new ChatMessage("user", "hi")]));
            Assert.Equal([ChatTemplate.FallbackStop], format.StopStrings);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
