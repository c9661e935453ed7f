using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Nn;

public class ActivationStoreTests
{
    private readonly CpuBackend _cpu = new(1);

    [Fact]
    public void BuffersAreReusedPerSlotAndKeyAndGrowOnlyWhenLarger()
    {
        var store = new ActivationStore(_cpu);
        var a = store.Buffer(0, "x", new Shape(4, 8), DType.F32);
        var again = store.Buffer(0, "x", new Shape(4, 8), DType.F32);
        var smaller = store.Buffer(0, "x", new Shape(2, 8), DType.F32);
        var otherSlot = store.Buffer(1, "x", new Shape(4, 8), DType.F32);
        Assert.Same(a.Storage, again.Storage);
        Assert.Same(a.Storage, smaller.Storage);
        Assert.NotSame(a.Storage, otherSlot.Storage);
        Assert.Equal(new Shape(2, 8), smaller.Shape);
        var larger = store.Buffer(0, "x", new Shape(8, 8), DType.F32);
        Assert.NotSame(a.Storage, larger.Storage);
        Assert.Equal(64 + 32, store.BufferedElements);
    }

    [Fact]
    public void AnActivationPastTwoToThe31ElementsIsRefusedNamingItAndTheRemedy()
    {
        // GPT-2's logits for one micro-batch of 64 x 1024 tokens: 65,536 x 50,304 = 3.3 G elements. Nothing is allocated.
        var store = new ActivationStore(_cpu);
        var e = Assert.Throws<ArgumentException>(() => store.Buffer(0, "lm_head.out", new Shape(65536, 50304), DType.BF16));
        Assert.Contains("lm_head.out", e.Message);
        Assert.Contains("3,296,722,944", e.Message);
        Assert.Contains("--micro", e.Message);
        Assert.Equal(0, store.BufferedElements);
    }

    [Fact]
    public void SharedSlotsKeyBlocksByRoleAndMicroBatchesByFullName()
    {
        var store = new ActivationStore(_cpu);
        ActivationKey k0 = "blocks.0.attn.qkv.out", k1 = "blocks.1.attn.qkv.out";
        Assert.Equal("attn.qkv.out", k0.Role);
        Assert.Equal("final_norm.out", new ActivationKey("final_norm.out").Role);
        var shape = new Shape(3);
        var training = PassContext.Training(store, 0);
        Assert.NotSame(training.Buffer(k0, shape, DType.F32).Storage, training.Buffer(k1, shape, DType.F32).Storage);
        var transient = PassContext.Transient(store);
        Assert.Same(transient.Buffer(k0, shape, DType.F32).Storage, transient.Buffer(k1, shape, DType.F32).Storage);
        Assert.Same(training.Scratch(k0, shape, DType.F32).Storage, transient.Scratch(k1, shape, DType.F32).Storage);
    }

    [Fact]
    public void ReleaseForgetsOnlyThatMicroBatchAndGetNamesWhatIsMissing()
    {
        var store = new ActivationStore(_cpu);
        var t = _cpu.Allocate(new Shape(2), DType.F32);
        store.Save(0, "a", t);
        store.Save(1, "a", t);
        store.Release(0);
        Assert.False(store.Contains(0, "a"));
        Assert.Same(t, store.Get(1, "a"));
        var e = Assert.Throws<InvalidOperationException>(() => store.Get(0, "a"));
        Assert.Contains("'a'", e.Message);
        Assert.Contains("micro-batch 0", e.Message);
        // A transient pass saves nothing.
        PassContext.Transient(store).Save("b", t);
        Assert.Equal(0, store.SavedCount(ActivationStore.TransientSlot));
    }
}
