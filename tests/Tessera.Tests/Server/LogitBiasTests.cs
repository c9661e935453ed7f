using System.Text.Json;
using OpenAI.Chat;
using Xunit;

namespace Tessera.Tests.Server;

/// <summary>
/// OpenAI's logit_bias through the SDK (<c>ChatCompletionOptions.LogitBiases</c>) and raw HTTP: -100 bans a token the
/// greedy completion would have chosen, +100 forces one, and a bias outside its range or a key that is not a token id is a
/// 400 naming the field.
/// </summary>
public class LogitBiasTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private TestServer S => fixture.Server;
    private ChatClient Chat => S.Client().GetChatClient(TestServer.Model);
    private static readonly OpenAI.Chat.ChatMessage[] Conversation = [new UserChatMessage("Name a colour.")];

    private async Task<string> Complete(ChatCompletionOptions options) =>
        (await Chat.CompleteChatAsync(Conversation, options, TestContext.Current.CancellationToken)).Value.Content[0].Text;

    [Fact]
    public async Task ABiasBansOrForcesATokenOfAGreedyCompletion()
    {
        string plain = await Complete(new ChatCompletionOptions { MaxOutputTokenCount = 12, Temperature = 0 });
        int first = plain[0];                                         // byte tokens: a character's id is its byte
        Assert.InRange(first, 1, 127);                                // an ASCII character (the model is seeded), so one token
        var banned = new ChatCompletionOptions { MaxOutputTokenCount = 12, Temperature = 0 };
        banned.LogitBiases[first] = -100;
        string without = await Complete(banned);
        Assert.DoesNotContain((char)first, without);
        var forced = new ChatCompletionOptions { MaxOutputTokenCount = 6, Temperature = 0 };
        forced.LogitBiases['z'] = 100;
        Assert.Equal("zzzzzz", await Complete(forced));
    }

    [Theory]
    [InlineData("""{"122": 101}""", "[-100, 100]")]
    [InlineData("""{"z": 5}""", "is not a token id")]
    [InlineData("""{"4096": 5}""", "outside the vocabulary")]
    public async Task ABadBiasIsRefusedNamingTheField(string bias, string message)
    {
        var (status, json, _) = await S.PostAsync("v1/chat/completions",
            $$"""{"model": "{{TestServer.Model}}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "logit_bias": {{bias}}}""");
        Assert.Equal(400, status);
        Assert.Equal("logit_bias", json.GetProperty("error").GetProperty("param").GetString());
        Assert.Contains(message, json.GetProperty("error").GetProperty("message").GetString());
    }
}
