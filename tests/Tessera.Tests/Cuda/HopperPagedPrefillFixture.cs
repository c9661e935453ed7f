using Tessera.Cuda;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Backends on device 0 for the paged prefill on the Hopper forward tile (<see cref="CudaHopperPagedPrefillTests"/>), each
/// with its ops profiled so a test sees which kernel ran: the Hopper kernels with CTAs of one warpgroup and of two
/// (<see cref="CudaBackendOptions.HopperAttentionWarpgroups"/>), and one with <see cref="CudaBackendOptions.HopperAttention"/>
/// off (flash_attention.cu's <c>paged_prefill</c>). Holds the reason where there is no device.
/// </summary>
public sealed class HopperPagedPrefillFixture : IDisposable
{
    public HopperPagedPrefillFixture()
    {
        try
        {
            OneWarpgroup = new CudaBackend(0, CudaBackendOptions.Default with { HopperAttention = true, HopperAttentionWarpgroups = 1, ProfileOps = true });
            TwoWarpgroups = new CudaBackend(0, CudaBackendOptions.Default with { HopperAttention = true, HopperAttentionWarpgroups = 2, ProfileOps = true });
            Flash2 = new CudaBackend(0, CudaBackendOptions.Default with { HopperAttention = false, ProfileOps = true });
        }
        catch (Exception e) when (e is Tessera.Cuda.Interop.CudaUnavailableException or DllNotFoundException or EntryPointNotFoundException)
        {
            Reason = e.Message;
        }
    }

    /// <summary>The Hopper kernels with CTAs of one warpgroup (64 query rows).</summary>
    public CudaBackend? OneWarpgroup { get; }

    /// <summary>The Hopper kernels with CTAs of two warpgroups (128 query rows).</summary>
    public CudaBackend? TwoWarpgroups { get; }

    /// <summary>The Hopper kernels off: prefill chunks on flash_attention.cu's <c>paged_prefill</c>.</summary>
    public CudaBackend? Flash2 { get; }

    /// <summary>Why there are no backends, or null.</summary>
    public string? Reason { get; }

    public void Dispose()
    {
        OneWarpgroup?.Dispose();
        TwoWarpgroups?.Dispose();
        Flash2?.Dispose();
    }
}
