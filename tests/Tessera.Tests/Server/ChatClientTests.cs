using Microsoft.Extensions.AI;
using Tessera.Inference.Serving;
using Xunit;

namespace Tessera.Tests.Server;

/// <summary>Microsoft.Extensions.AI: the OpenAI adapter over HTTP and Tessera's in-process client give the same greedy reply.</summary>
public class ChatClientTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    [Fact]
    public async Task OpenAiAdapterOverHttpAndInProcessClientAgree()
    {
        var s = fixture.Server;
        IChatClient http = s.Client().GetChatClient(TestServer.Model).AsIChatClient();
        IChatClient local = new TesseraChatClient(s.Engine, s.Chat, TestServer.Model);
        var options = new ChatOptions { MaxOutputTokens = 10, Temperature = 0 };
        var overHttp = await http.GetResponseAsync("Say something.", options, TestContext.Current.CancellationToken);
        var inProcess = await local.GetResponseAsync("Say something.", options, TestContext.Current.CancellationToken);
        Assert.Equal(inProcess.Text, overHttp.Text);
        Assert.Equal(10, overHttp.Usage!.OutputTokenCount);
        Assert.Equal(ChatFinishReason.Length, inProcess.FinishReason);

        var streamed = new System.Text.StringBuilder();
        await foreach (var update in http.GetStreamingResponseAsync("Say something.", options, TestContext.Current.CancellationToken)) streamed.Append(update.Text);
        Assert.Equal(inProcess.Text, streamed.ToString());
        var localStream = new System.Text.StringBuilder();
        await foreach (var update in local.GetStreamingResponseAsync("Say something.", options, TestContext.Current.CancellationToken)) localStream.Append(update.Text);
        Assert.Equal(inProcess.Text, localStream.ToString());
    }

    [Fact]
    public async Task CancellingTheInProcessStreamFreesItsBlocks()
    {
        var s = fixture.Server;
        IChatClient local = new TesseraChatClient(s.Engine, s.Chat, TestServer.Model);
        using var cts = new CancellationTokenSource();
        int received = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var _ in local.GetStreamingResponseAsync("Count.", new ChatOptions { MaxOutputTokens = 200, Temperature = 0 }, cts.Token))
                if (++received == 3) cts.Cancel();
        });
        Assert.Equal(0, await s.BlocksInUseAfterSettlingAsync());
    }
}
