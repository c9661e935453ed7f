using System.Runtime.InteropServices;
using Tessera.Distributed.Nccl;
using Xunit;

namespace Tessera.Tests.Distributed;

public class NcclProcessGroupTests
{
    [Fact]
    public void AMissingNcclLibraryIsReportedByNameWithWhatToDo()
    {
        if (NativeLibrary.TryLoad("libnccl.so.2", out var handle))
        {
            NativeLibrary.Free(handle);
            Assert.Skip("libnccl.so.2 is installed here; the GPU tests exercise NCCL");
        }
        Assert.False(NcclProcessGroup.IsAvailable());
        var e = Assert.Throws<NcclException>(() => NcclProcessGroup.CreateUniqueId());
        Assert.Contains("libnccl.so.2", e.Message);
        Assert.Contains("LD_LIBRARY_PATH", e.Message);
    }
}
