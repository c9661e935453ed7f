using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Tessera.Distributed.Launch;

/// <summary>
/// The start-up meeting of a multi-process run (torch's TCP store, reduced to one exchange):
/// rank 0 listens on MASTER_PORT; every other rank connects to MASTER_ADDR:MASTER_PORT and sends
/// its rank and world size; once each of ranks 1 .. N-1 has arrived exactly once with the same world
/// size, rank 0 sends every rank the same blob (the NCCL unique id). Any disagreement is reported to
/// every connected rank; a rank that never arrives makes rank 0 (and the waiting ranks) fail naming it.
/// <para>Protocol: hello = "TSRZ", version, rank, world size (int32 little-endian);
/// reply = status byte (0 ok, 1 error), int32 length, payload (the blob, or a UTF-8 message).</para>
/// </summary>
public sealed class TcpRendezvous : IDisposable
{
    private const int Magic = 0x5A525354; // "TSRZ"
    private const int ProtocolVersion = 1;
    private const int MaxBlobBytes = 1 << 20;
    private static readonly TimeSpan ReplyGrace = TimeSpan.FromSeconds(2);
    /// <summary>
    /// How long rank 0 waits for the hello of a rank that connected, at least, even past the deadline. 5 s: with 2 s, a hello
    /// sent 0.4 s past the deadline was once not heard on a loaded 2-core CI machine (the read's continuation ran too late).
    /// </summary>
    private static readonly TimeSpan HelloGrace = TimeSpan.FromSeconds(5);

    private readonly TcpListener _listener;

    private TcpRendezvous(TcpListener listener, int worldSize, TimeSpan timeout)
    {
        _listener = listener;
        WorldSize = worldSize;
        Timeout = timeout;
        Port = ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>The port rank 0 listens on (the bound one when 0 was asked for).</summary>
    public int Port { get; }

    /// <summary>Number of ranks expected, rank 0 included.</summary>
    public int WorldSize { get; }

    /// <summary>How long rank 0 waits for every rank to arrive.</summary>
    public TimeSpan Timeout { get; }

    /// <summary>
    /// Rank 0: starts listening on <paramref name="port"/> (0 picks a free port, see <see cref="Port"/>)
    /// on <paramref name="bindAddress"/> (default: every interface).
    /// </summary>
    public static TcpRendezvous Listen(int port, int worldSize, TimeSpan timeout, IPAddress? bindAddress = null)
    {
        if (worldSize < 1) throw new ArgumentOutOfRangeException(nameof(worldSize), $"world size must be at least 1, got {worldSize}");
        if (port < 0 || port > 65535) throw new ArgumentOutOfRangeException(nameof(port), $"MASTER_PORT {port} is outside [0, 65535]");
        var listener = new TcpListener(bindAddress ?? IPAddress.Any, port);
        try
        {
            listener.Start(backlog: Math.Max(16, worldSize));
        }
        catch (SocketException e)
        {
            throw new RendezvousException($"rank 0 could not listen on {bindAddress ?? IPAddress.Any}:{port}: {e.SocketErrorCode} ({e.Message}); " +
                "another run may hold the port: choose another MASTER_PORT", e);
        }
        return new TcpRendezvous(listener, worldSize, timeout);
    }

    /// <summary>Rank 0: waits for ranks 1 .. N-1, checks them, sends each <paramref name="blob"/>, and returns it.</summary>
    public byte[] Serve(ReadOnlySpan<byte> blob, CancellationToken cancellationToken = default) =>
        ServeAsync(blob.ToArray(), cancellationToken).GetAwaiter().GetResult();

    /// <summary>Asynchronous <see cref="Serve"/>.</summary>
    public async Task<byte[]> ServeAsync(byte[] blob, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(blob);
        if (blob.Length > MaxBlobBytes) throw new ArgumentException($"rendezvous blob of {blob.Length} bytes exceeds {MaxBlobBytes}", nameof(blob));
        var arrived = new Dictionary<int, (TcpClient Client, EndPoint? From)>();
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(Timeout);
        var started = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            while (arrived.Count < WorldSize - 1)
            {
                TcpClient client;
                try
                {
                    client = await _listener.AcceptTcpClientAsync(deadline.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    var missing = Enumerable.Range(1, WorldSize - 1).Where(r => !arrived.ContainsKey(r)).ToArray();
                    await FailAllAsync(arrived.Values.Select(a => a.Client), null,
                        $"rendezvous on port {Port} timed out after {Timeout.TotalSeconds:0.###} s: {(missing.Length == 1 ? "rank" : "ranks")} {string.Join(", ", missing)} " +
                        $"of world size {WorldSize} did not arrive (arrived: 0{string.Concat(arrived.Keys.Order().Select(r => $", {r}"))}); " +
                        "check that every rank was started with the same MASTER_ADDR and MASTER_PORT").ConfigureAwait(false);
                    throw; // unreachable: FailAllAsync throws
                }
                var from = client.Client.RemoteEndPoint;
                int[] hello;
                // A rank that connected in time gets at least HelloGrace to announce itself, even past the deadline: its
                // 16 bytes may trail the connection on a loaded machine, and a cancelled read here would otherwise escape as
                // an OperationCanceledException instead of the report of which ranks are missing.
                using var helloDeadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                helloDeadline.CancelAfter(Max(HelloGrace, Timeout - started.Elapsed));
                try
                {
                    hello = await ReadIntsAsync(client.GetStream(), 4, helloDeadline.Token).ConfigureAwait(false);
                }
                catch (Exception e) when (e is IOException or SocketException or EndOfStreamException
                                          || (e is OperationCanceledException && !cancellationToken.IsCancellationRequested))
                {
                    client.Dispose(); // a probe, a rank that died while connecting, or one silent past the grace: it will retry or time out
                    continue;
                }
                if (hello[0] != Magic || hello[1] != ProtocolVersion)
                {
                    await ReplyAsync(client, 1, Encoding.UTF8.GetBytes($"{from} is not a Tessera rendezvous client of protocol {ProtocolVersion}"), CancellationToken.None).ConfigureAwait(false);
                    client.Dispose();
                    continue;
                }
                int rank = hello[2], worldSize = hello[3];
                string? error = null;
                if (worldSize != WorldSize)
                    error = $"rank {rank} (from {from}) has WORLD_SIZE {worldSize} but rank 0 has {WorldSize}; every rank must be started with the same WORLD_SIZE";
                else if (rank < 1 || rank >= WorldSize)
                    error = $"a process (from {from}) joined as rank {rank}, outside [1, {WorldSize}); rank 0 is the master and others need RANK in [1, WORLD_SIZE)";
                else if (arrived.TryGetValue(rank, out var first))
                    error = $"rank {rank} arrived twice (from {first.From} and {from}); every process needs a distinct RANK";
                if (error is not null)
                    await FailAllAsync(arrived.Values.Select(a => a.Client), client, $"rendezvous on port {Port} failed: {error}").ConfigureAwait(false);
                arrived.Add(rank, (client, from));
            }
            // Every rank has arrived: the replies are not bound by the arrival deadline (the last rank may arrive just
            // before it), only by the caller and a grace for a rank that stopped reading.
            using var replies = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            replies.CancelAfter(Max(Timeout, ReplyGrace));
            try
            {
                foreach (var (client, _) in arrived.Values)
                    await ReplyAsync(client, 0, blob, replies.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                throw new RendezvousException($"rendezvous on port {Port}: every rank arrived, but rank 0 could not send them the " +
                    $"rendezvous data within {Max(Timeout, ReplyGrace).TotalSeconds:0.###} s (a rank stopped reading)");
            }
            return blob;
        }
        finally
        {
            foreach (var (client, _) in arrived.Values) client.Dispose();
        }
    }

    /// <summary>
    /// Ranks 1 .. N-1: connects to the master (retrying until <paramref name="timeout"/>), announces
    /// <paramref name="rank"/> and <paramref name="worldSize"/>, and returns rank 0's blob.
    /// </summary>
    public static byte[] Join(string masterAddress, int masterPort, int rank, int worldSize, TimeSpan timeout, CancellationToken cancellationToken = default) =>
        JoinAsync(masterAddress, masterPort, rank, worldSize, timeout, cancellationToken).GetAwaiter().GetResult();

    /// <summary>Asynchronous <see cref="Join"/>.</summary>
    public static async Task<byte[]> JoinAsync(string masterAddress, int masterPort, int rank, int worldSize, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(masterAddress);
        string master = $"{masterAddress}:{masterPort}";
        var start = Environment.TickCount64;
        long deadlineMs = start + (long)timeout.TotalMilliseconds;
        var backoff = TimeSpan.FromMilliseconds(50);
        int attempts = 0;
        TcpClient? client = null;
        while (client is null)
        {
            attempts++;
            var c = new TcpClient { NoDelay = true };
            long remaining = Math.Max(1, deadlineMs - Environment.TickCount64);
            using var attempt = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            attempt.CancelAfter(TimeSpan.FromMilliseconds(remaining));
            string lastError;
            try
            {
                await c.ConnectAsync(masterAddress, masterPort, attempt.Token).ConfigureAwait(false);
                client = c;
                break;
            }
            catch (SocketException e) { lastError = $"{e.SocketErrorCode} ({e.Message})"; c.Dispose(); }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested) { lastError = "connection attempt timed out"; c.Dispose(); }
            remaining = deadlineMs - Environment.TickCount64;
            if (remaining <= 0)
                throw new RendezvousException($"rank {rank} could not reach the rendezvous master at {master} within {timeout.TotalSeconds:0.###} s " +
                    $"({attempts} attempts, last error: {lastError}); check MASTER_ADDR and MASTER_PORT, that rank 0 is running, and that the port is open");
            await Task.Delay(TimeSpan.FromMilliseconds(Math.Min(backoff.TotalMilliseconds, remaining)), cancellationToken).ConfigureAwait(false);
            backoff = TimeSpan.FromMilliseconds(Math.Min(1000, backoff.TotalMilliseconds * 2));
        }
        using (client)
        {
            // Rank 0 reports a missing rank at its own timeout: wait a little longer to hear why.
            using var replyDeadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            replyDeadline.CancelAfter(TimeSpan.FromMilliseconds(Math.Max(0, deadlineMs - Environment.TickCount64)) + ReplyGrace);
            var stream = client.GetStream();
            try
            {
                var hello = new byte[16];
                BinaryPrimitives.WriteInt32LittleEndian(hello, Magic);
                BinaryPrimitives.WriteInt32LittleEndian(hello.AsSpan(4), ProtocolVersion);
                BinaryPrimitives.WriteInt32LittleEndian(hello.AsSpan(8), rank);
                BinaryPrimitives.WriteInt32LittleEndian(hello.AsSpan(12), worldSize);
                await stream.WriteAsync(hello, replyDeadline.Token).ConfigureAwait(false);
                var status = new byte[1];
                await stream.ReadExactlyAsync(status, replyDeadline.Token).ConfigureAwait(false);
                int length = (await ReadIntsAsync(stream, 1, replyDeadline.Token).ConfigureAwait(false))[0];
                if (length < 0 || length > MaxBlobBytes)
                    throw new RendezvousException($"rank {rank}: the master at {master} sent a malformed reply (length {length})");
                var payload = new byte[length];
                await stream.ReadExactlyAsync(payload, replyDeadline.Token).ConfigureAwait(false);
                if (status[0] != 0)
                    throw new RendezvousException($"rank {rank}: the master at {master} reports: {Encoding.UTF8.GetString(payload)}");
                return payload;
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                throw new RendezvousException($"rank {rank} connected to the master at {master} but got no reply within {timeout.TotalSeconds:0.###} s; " +
                    "rank 0 is still waiting for other ranks or is stuck");
            }
            catch (Exception e) when (e is IOException or EndOfStreamException or SocketException)
            {
                throw new RendezvousException($"rank {rank}: the master at {master} closed the connection before the rendezvous completed " +
                    "(rank 0 failed, timed out, or this process is not the rank it claims)", e);
            }
        }
    }

    /// <summary>
    /// The whole exchange for <paramref name="environment"/>: rank 0 listens on MASTER_PORT and serves
    /// <paramref name="createBlob"/>'s bytes, the others join; a single-process world just creates the blob.
    /// </summary>
    public static byte[] Exchange(DistributedEnvironment environment, Func<byte[]> createBlob, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(environment);
        ArgumentNullException.ThrowIfNull(createBlob);
        if (environment.WorldSize == 1) return createBlob();
        if (environment.Rank == 0)
        {
            using var rendezvous = Listen(environment.MasterPort, environment.WorldSize, timeout);
            return rendezvous.Serve(createBlob(), cancellationToken);
        }
        return Join(environment.MasterAddress, environment.MasterPort, environment.Rank, environment.WorldSize, timeout, cancellationToken);
    }

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    /// <summary>Stops listening.</summary>
    public void Dispose() => _listener.Stop();

    private static async Task FailAllAsync(IEnumerable<TcpClient> clients, TcpClient? offender, string message)
    {
        var bytes = Encoding.UTF8.GetBytes(message);
        foreach (var c in offender is null ? clients : clients.Append(offender))
        {
            try { await ReplyAsync(c, 1, bytes, CancellationToken.None).ConfigureAwait(false); }
            catch (Exception e) when (e is IOException or SocketException) { /* that rank is gone; the others still hear */ }
            c.Dispose();
        }
        throw new RendezvousException(message);
    }

    private static async Task ReplyAsync(TcpClient client, byte status, byte[] payload, CancellationToken cancellationToken)
    {
        var header = new byte[5];
        header[0] = status;
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(1), payload.Length);
        var stream = client.GetStream();
        await stream.WriteAsync(header, cancellationToken).ConfigureAwait(false);
        await stream.WriteAsync(payload, cancellationToken).ConfigureAwait(false);
        await stream.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    private static async Task<int[]> ReadIntsAsync(Stream stream, int count, CancellationToken cancellationToken)
    {
        var buffer = new byte[4 * count];
        await stream.ReadExactlyAsync(buffer, cancellationToken).ConfigureAwait(false);
        return Enumerable.Range(0, count).Select(i => BinaryPrimitives.ReadInt32LittleEndian(buffer.AsSpan(4 * i))).ToArray();
    }
}
