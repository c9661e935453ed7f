using Tessera.Models.Chat;
using Tessera.Server.Contracts;

namespace Tessera.Server.Endpoints;

/// <summary>
/// Finished responses kept in memory for previous_response_id and GET /v1/responses/{id}: at most <c>capacity</c>, the least
/// recently used (stored or read) evicted first. Each entry holds the response as sent and its conversation without the
/// instructions (OpenAI does not carry a response's instructions over to the next), the output appended as assistant turns.
/// Thread-safe; nothing survives a restart.
/// </summary>
internal sealed class ResponseStore(int capacity)
{
    /// <summary>A stored response: the object sent, and the conversation a continuation starts from.</summary>
    public sealed record Entry(ResponseBody Response, IReadOnlyList<ChatMessage> Conversation);

    private readonly Dictionary<string, LinkedListNode<Entry>> _byId = [];
    private readonly LinkedList<Entry> _recency = [];                  // most recently used first
    private readonly Lock _lock = new();

    /// <summary>How many responses are stored now.</summary>
    public int Count
    {
        get { lock (_lock) return _byId.Count; }
    }

    /// <summary>Stores <paramref name="entry"/> (a no-op at capacity 0), evicting the least recently used beyond the capacity.</summary>
    public void Add(Entry entry)
    {
        if (capacity == 0) return;
        lock (_lock)
        {
            if (_byId.Remove(entry.Response.Id, out var old)) _recency.Remove(old);
            _byId[entry.Response.Id] = _recency.AddFirst(entry);
            while (_byId.Count > capacity)
            {
                var last = _recency.Last!;
                _recency.RemoveLast();
                _byId.Remove(last.Value.Response.Id);
            }
        }
    }

    /// <summary>The stored response <paramref name="id"/>, now the most recently used; null when unknown or evicted.</summary>
    public Entry? Get(string id)
    {
        lock (_lock)
        {
            if (!_byId.TryGetValue(id, out var node)) return null;
            _recency.Remove(node);
            _recency.AddFirst(node);
            return node.Value;
        }
    }

    /// <summary>Forgets <paramref name="id"/>; whether it was stored.</summary>
    public bool Remove(string id)
    {
        lock (_lock)
        {
            if (!_byId.Remove(id, out var node)) return false;
            _recency.Remove(node);
            return true;
        }
    }
}
