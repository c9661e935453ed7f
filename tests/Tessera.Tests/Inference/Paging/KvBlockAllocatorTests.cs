using Tessera.Inference.Paging;
using Xunit;

namespace Tessera.Tests.Inference.Paging;

public class KvBlockAllocatorTests
{
    [Fact]
    public void RegisteredBlockIsSharedByReferenceAndStaysFindableAfterItsLastRelease()
    {
        var allocator = new KvBlockAllocator(3);
        Assert.True(allocator.TryAllocate(out int block));
        var hash = PrefixHash.Of(0, [1, 2, 3, 4]);
        allocator.Register(block, hash);
        Assert.Equal(block, allocator.Reuse(hash));
        Assert.Equal(2, allocator.References(block));
        allocator.Release(block);
        allocator.Release(block);
        Assert.Equal(0, allocator.InUse);
        Assert.Equal(block, allocator.Reuse(hash));                   // cached, taken back out of the free queue
        Assert.Equal(1, allocator.InUse);
    }

    [Fact]
    public void AllocationTakesTheLeastRecentlyFreedBlockAndForgetsItsPrefix()
    {
        var allocator = new KvBlockAllocator(2);
        allocator.TryAllocate(out int a);
        allocator.TryAllocate(out int b);
        Assert.False(allocator.TryAllocate(out _));
        var hash = PrefixHash.Of(0, [9]);
        allocator.Register(a, hash);
        allocator.Release(a);
        allocator.Release(b);
        Assert.True(allocator.TryAllocate(out int first));
        Assert.Equal(a, first);                                      // freed first, taken first
        Assert.False(allocator.IsCached(hash));
        Assert.Equal(-1, allocator.Reuse(hash));
    }

    [Fact]
    public void PrefixHashDependsOnEveryEarlierBlock()
    {
        var first = PrefixHash.Of(0, [1, 2]);
        Assert.Equal(first, PrefixHash.Of(0, [1, 2]));
        Assert.NotEqual(PrefixHash.Of(first, [3, 4]), PrefixHash.Of(PrefixHash.Of(0, [1, 5]), [3, 4]));
    }

    [Fact]
    public void ReleasingMoreThanTakenIsRefused()
    {
        var allocator = new KvBlockAllocator(1);
        allocator.TryAllocate(out int block);
        allocator.Release(block);
        Assert.Throws<InvalidOperationException>(() => allocator.Release(block));
    }
}
