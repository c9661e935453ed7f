using OpenAI.Chat;
using Xunit;

namespace Tessera.Tests.Server;

/// <summary>
/// A server with speculative decoding (as `tessera serve --draft-tokens 4` starts it) against one without, through the
/// OpenAI SDK: the same greedy text, streamed, and /metrics counts the drafts.
/// </summary>
public class SpeculativeServingTests
{
    [Fact]
    public async Task GreedyChatThroughASpeculatingServerEqualsThePlainServersAndMetricsCountTheDrafts()
    {
        await using var plain = await TestServer.StartAsync();
        await using var speculative = await TestServer.StartAsync(draftTokens: 4);
        var ct = TestContext.Current.CancellationToken;
        // A request that invites repetition, so that the drafter finds n-grams in the prompt from the first step.
        OpenAI.Chat.ChatMessage[] conversation = [new UserChatMessage("abc abc abc abc abc abc abc abc abc abc")];
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 48, Temperature = 0 };
        ChatCompletion expected = await plain.Client().GetChatClient(TestServer.Model).CompleteChatAsync(conversation, options, ct);
        var text = new System.Text.StringBuilder();
        ChatTokenUsage? usage = null;
        await foreach (var update in speculative.Client().GetChatClient(TestServer.Model).CompleteChatStreamingAsync(conversation, options, ct))
        {
            foreach (var part in update.ContentUpdate) text.Append(part.Text);
            usage ??= update.Usage;
        }
        Assert.Equal(expected.Content[0].Text, text.ToString());
        Assert.Equal(expected.Usage.OutputTokenCount, usage!.OutputTokenCount);
        double drafts = await speculative.MetricAsync("tessera_spec_decode_draft_tokens_total");
        double accepted = await speculative.MetricAsync("tessera_spec_decode_accepted_tokens_total");
        TestContext.Current.SendDiagnosticMessage($"drafts {drafts}, accepted {accepted}");
        Assert.True(drafts > 0, "the speculating server verified no draft");
        Assert.InRange(accepted, 0, drafts);
        Assert.Equal(0, await plain.MetricAsync("tessera_spec_decode_draft_tokens_total"));
        Assert.Equal(0, await speculative.BlocksInUseAfterSettlingAsync());
    }
}
