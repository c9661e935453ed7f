namespace Tessera.Inference.Paging;

/// <summary>
/// Hands out the blocks of a paged KV cache by index, with reference counts so that sequences with an identical prompt
/// prefix share its full blocks. A full block can be registered under the hash of its content (the tokens of every
/// position up to its end, see <see cref="PrefixHash"/>); when its last reference goes it stays findable, at the back of
/// the free queue, until a new allocation takes it (least recently freed first taken). A block is "in use" while some
/// sequence references it. Not thread-safe: the engine's loop owns it.
/// </summary>
public sealed class KvBlockAllocator
{
    private readonly int[] _references;
    private readonly UInt128[] _hashes;
    private readonly bool[] _hashed;
    private readonly LinkedList<int> _free = new();
    private readonly LinkedListNode<int>?[] _freeNodes;
    private readonly Dictionary<UInt128, int> _cached = new();

    /// <summary>An allocator of <paramref name="blocks"/> blocks, all free.</summary>
    public KvBlockAllocator(int blocks)
    {
        if (blocks <= 0) throw new ArgumentOutOfRangeException(nameof(blocks), $"KvBlockAllocator: blocks ({blocks}) must be positive");
        _references = new int[blocks];
        _hashes = new UInt128[blocks];
        _hashed = new bool[blocks];
        _freeNodes = new LinkedListNode<int>?[blocks];
        for (int i = 0; i < blocks; i++) _freeNodes[i] = _free.AddLast(i);
    }

    /// <summary>Number of blocks.</summary>
    public int Capacity => _references.Length;

    /// <summary>Blocks no sequence references (some may still hold a cached prefix).</summary>
    public int FreeCount => _free.Count;

    /// <summary>Blocks some sequence references.</summary>
    public int InUse => Capacity - _free.Count;

    /// <summary>Blocks registered under a content hash (in use or free).</summary>
    public int CachedCount => _cached.Count;

    /// <summary>References to <paramref name="block"/>.</summary>
    public int References(int block) => _references[block];

    /// <summary>Takes a free block (forgetting any prefix it cached) with one reference; false when none is free.</summary>
    public bool TryAllocate(out int block)
    {
        var node = _free.First;
        if (node is null) { block = -1; return false; }
        block = node.Value;
        _free.RemoveFirst();
        _freeNodes[block] = null;
        if (_hashed[block])
        {
            _cached.Remove(_hashes[block]);
            _hashed[block] = false;
        }
        _references[block] = 1;
        return true;
    }

    /// <summary>The block cached under <paramref name="hash"/> with one more reference, or -1 when none is.</summary>
    public int Reuse(UInt128 hash)
    {
        if (!_cached.TryGetValue(hash, out int block)) return -1;
        if (_references[block] == 0)
        {
            _free.Remove(_freeNodes[block]!);
            _freeNodes[block] = null;
        }
        _references[block]++;
        return block;
    }

    /// <summary>Whether a block is cached under <paramref name="hash"/>.</summary>
    public bool IsCached(UInt128 hash) => _cached.ContainsKey(hash);

    /// <summary>
    /// Records that <paramref name="block"/> (referenced, full, its keys and values computed) holds the content of
    /// <paramref name="hash"/>. When another block already holds it the first one stays the one found.
    /// </summary>
    public void Register(int block, UInt128 hash)
    {
        if (_references[block] <= 0) throw new InvalidOperationException($"KvBlockAllocator: block {block} is not in use and cannot be registered");
        if (_hashed[block] || _cached.ContainsKey(hash)) return;
        _hashes[block] = hash;
        _hashed[block] = true;
        _cached[hash] = block;
    }

    /// <summary>Drops one reference; the last one returns the block to the back of the free queue.</summary>
    public void Release(int block)
    {
        if (_references[block] <= 0) throw new InvalidOperationException($"KvBlockAllocator: block {block} is released more often than it was taken");
        if (--_references[block] == 0) _freeNodes[block] = _free.AddLast(block);
    }
}
