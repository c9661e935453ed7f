using Tessera.Models.Tokenization;

namespace Tessera.Inference.Constraints;

/// <summary>
/// A tokenizer's vocabulary arranged for checking every token against a <see cref="JsonRecognizer"/> at once. Outside strings,
/// a trie of the tokens' bytes: a walk down it feeds each shared prefix once and drops a whole subtree at the first byte the
/// grammar refuses (a key or a number leaves a few hundred tokens of 100,000 to look at). Inside a string, where an ordinary
/// byte leaves the recognizer as it was, every token made of ordinary bytes is allowed at once, and only the few that hold a
/// quote, a backslash or a control byte are checked one by one. Built once per tokenizer (flat arrays: a node's edges are a
/// run of (byte, child) pairs); safe to share between threads.
/// </summary>
public sealed class TokenVocabulary
{
    private readonly int[] _firstEdge, _edgeCount;       // per node: its edges' run
    private readonly byte[] _edgeByte;                   // per edge
    private readonly int[] _edgeChild;                   // per edge
    private readonly int[] _firstToken, _tokenCount;     // per node: the tokens whose bytes end there
    private readonly int[] _tokens;
    private readonly int[] _empty;                       // tokens of no bytes (special tokens that decode to nothing)
    private readonly bool[] _ordinary;                   // per token: every byte is one a string takes as it is
    private readonly int[] _unordinary;                  // the other tokens of at least one byte
    private readonly ITokenizer _tokenizer;

    /// <summary>Builds the trie of <paramref name="tokenizer"/>'s tokens.</summary>
    public TokenVocabulary(ITokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        _tokenizer = tokenizer;
        VocabSize = tokenizer.VocabSize;
        _ordinary = new bool[VocabSize];
        var unordinary = new List<int>();
        var children = new List<Dictionary<byte, int>> { new() };
        var ends = new List<List<int>?> { null };
        var empty = new List<int>();
        for (int id = 0; id < VocabSize; id++)
        {
            var bytes = tokenizer.TokenBytes(id);
            if (bytes.IsEmpty) { empty.Add(id); continue; }
            bool ordinary = true;
            foreach (var b in bytes) ordinary &= JsonRecognizer.IsOrdinaryStringByte(b);
            if (ordinary) _ordinary[id] = true; else unordinary.Add(id);
            int node = 0;
            foreach (var b in bytes)
            {
                if (!children[node].TryGetValue(b, out int next))
                {
                    next = children.Count;
                    children[node][b] = next;
                    children.Add([]);
                    ends.Add(null);
                }
                node = next;
            }
            (ends[node] ??= []).Add(id);
        }
        int nodes = children.Count, edges = children.Sum(c => c.Count), endCount = ends.Sum(e => e?.Count ?? 0);
        _firstEdge = new int[nodes]; _edgeCount = new int[nodes]; _edgeByte = new byte[edges]; _edgeChild = new int[edges];
        _firstToken = new int[nodes]; _tokenCount = new int[nodes]; _tokens = new int[endCount];
        int e = 0, t = 0;
        for (int n = 0; n < nodes; n++)
        {
            _firstEdge[n] = e;
            foreach (var (b, child) in children[n].OrderBy(p => p.Key)) { _edgeByte[e] = b; _edgeChild[e++] = child; }
            _edgeCount[n] = e - _firstEdge[n];
            _firstToken[n] = t;
            foreach (var id in ends[n] ?? []) _tokens[t++] = id;
            _tokenCount[n] = t - _firstToken[n];
        }
        _empty = [.. empty];
        _unordinary = [.. unordinary];
    }

    /// <summary>Token ids covered: the tokenizer's vocabulary size.</summary>
    public int VocabSize { get; }

    /// <summary>Sets <paramref name="mask"/>[id] to whether token id's bytes may come next in <paramref name="state"/> (which is not changed).</summary>
    public void Allowed(JsonRecognizer state, Span<bool> mask)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (mask.Length < VocabSize) throw new ArgumentException($"the mask holds {mask.Length} tokens, the vocabulary {VocabSize}", nameof(mask));
        mask.Clear();
        foreach (var id in _empty) mask[id] = state.IsComplete;
        if (state.InString)
        {
            _ordinary.AsSpan().CopyTo(mask);
            foreach (var id in _unordinary) mask[id] = state.Accepts(_tokenizer.TokenBytes(id));
            return;
        }
        Walk(0, state, mask);
    }

    private void Walk(int node, JsonRecognizer state, Span<bool> mask)
    {
        for (int e = _firstEdge[node], end = e + _edgeCount[node]; e < end; e++)
        {
            byte b = _edgeByte[e];
            var next = state.KeepsStateOn(b) ? state : state.After(b);
            if (next is null) continue;
            int child = _edgeChild[e];
            for (int i = _firstToken[child], stop = i + _tokenCount[child]; i < stop; i++) mask[_tokens[i]] = true;
            Walk(child, next, mask);
        }
    }
}
