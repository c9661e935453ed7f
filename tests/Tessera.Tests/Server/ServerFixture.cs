using Xunit;

namespace Tessera.Tests.Server;

/// <summary>One server shared by the tests of a class (starting one costs a model build and a warm-up pass).</summary>
public sealed class ServerFixture : IAsyncLifetime
{
    public TestServer Server { get; private set; } = null!;

    public async ValueTask InitializeAsync() => Server = await TestServer.StartAsync();

    public async ValueTask DisposeAsync() => await Server.DisposeAsync();
}
