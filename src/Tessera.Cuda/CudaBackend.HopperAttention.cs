using Tessera.Tensors;

namespace Tessera.Cuda;

public sealed unsafe partial class CudaBackend
{
    // flash_attention_hopper.cu: CTAs of two warpgroups (256 threads), 128 query rows, key/value blocks of 128 rows in a
    // two-stage ring; 1,024 bytes of slack so the kernel can align its tiles to the 128-byte swizzle's 1,024-byte period.
    private const int HopperRows = 128, HopperKeys = 128, HopperThreads = 256;
    private const string HopperFile = "flash_attention_hopper.cu";

    /// <summary>
    /// Whether the attention forward runs on the Hopper kernel here: <see cref="CudaBackendOptions.HopperAttention"/> on a
    /// compute capability 9.0 device (wgmma exists there only, compiled for sm_90a). Calls with a sliding window, and
    /// decoding's split kernels, stay on flash_attention.cu either way.
    /// </summary>
    public bool UsesHopperAttention => Options.HopperAttention && CudaDevice.ComputeCapability == (9, 0);

    private void HopperForward(DType dtype, int b, int t, int s, int h, int kh, int d, ulong pq, ulong pk, ulong pv, ulong po, ulong pl,
        Strides3 sq, Strides3 sk, Strides3 sv, Strides3 so, float sc, ulong starts)
    {
        void** args = stackalloc void*[] { &pq, &pk, &pv, &po, &pl, &t, &s, &h, &kh, &sq, &sk, &sv, &so, &sc, &starts };
        uint shared = (uint)(1024 + (HopperRows + 4 * HopperKeys) * d * 2); // Q tile + two stages of K and V
        string kernel = "flash_forward_hopper_" + FlashSuffix(dtype, d);
        PreferSharedMemory(HopperFile, kernel);
        Launch(HopperFile, kernel, ((uint)((t + HopperRows - 1) / HopperRows), (uint)h, (uint)b), HopperThreads, args, shared);
    }
}
