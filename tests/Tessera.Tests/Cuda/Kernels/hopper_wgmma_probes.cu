// Test probes of flash_attention_hopper.cu (appended to it by CudaHopperAttentionTests.WgmmaOperandLayoutsAgreeWithTheCpu):
// one warpgroup's products on given matrices with the kernel file's own staging, descriptors and fragment layouts, fp32
// results written out, so a wrong descriptor bit or fragment mapping shows as its own failure.

// ---- test probes (CudaHopperAttentionTests): one warpgroup's products on given matrices, fp32 results out.
// S (64 x 128) = Q (64 x D) K (128 x D)^T, both staged like the forward's tiles.
template <typename T, int D>
__device__ void probe_qk(const T* q, const T* k, float* s_out)
{
    extern __shared__ unsigned char smem_raw[];
    const unsigned sQ = (smem_u32(smem_raw) + 1023u) & ~1023u, sK = sQ + 128 * D * 2;
    const int tid = threadIdx.x, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
    load_tile_sw128<D, 128, 256>(sQ, q, D, 0, 64, tid);
    load_tile_sw128<D, 128, 256>(sK, k, D, 0, 128, tid);
    cp_async_commit();
    cp_async_wait<0>();
    fence_async_shared();
    __syncthreads();
    if (tid >= 128) return;
    float s[64];
    const u64 qdesc = sw128_descriptor(sQ, 16, 1024), kdesc = sw128_descriptor(sK, 16, 1024);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        Wgmma<T, 128>::ss(s, desc_plus(qdesc, (kk >> 2) * 128 * 128 + (kk & 3) * 32), desc_plus(kdesc, (kk >> 2) * 128 * 128 + (kk & 3) * 32), kk > 0);
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers<64>(s);
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) s_out[(warp * 16 + g + 8 * (e >> 1)) * 128 + j * 8 + 2 * c4 + (e & 1)] = s[4 * j + e];
}

// O (64 x D) = P (64 x 128, from registers) V (128 x D, N-major from shared memory).
template <typename T, int D>
__device__ void probe_pv(const T* p, const T* v, float* o_out)
{
    extern __shared__ unsigned char smem_raw[];
    const unsigned sV = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const int tid = threadIdx.x, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
    load_tile_sw128<D, 128, 256>(sV, v, D, 0, 128, tid);
    cp_async_commit();
    cp_async_wait<0>();
    fence_async_shared();
    __syncthreads();
    if (tid >= 128) return;
    unsigned a[8][4];
    const unsigned* pr = (const unsigned*)p;   // pairs of 16-bit values, row stride 64 pairs
#pragma unroll
    for (int kk = 0; kk < 8; kk++)
    {
        const int r0 = warp * 16 + g, r1 = r0 + 8, c = kk * 8 + c4;   // pair index of columns 16 kk + 2 c4
        a[kk][0] = pr[r0 * 64 + c]; a[kk][1] = pr[r1 * 64 + c]; a[kk][2] = pr[r0 * 64 + c + 4]; a[kk][3] = pr[r1 * 64 + c + 4];
    }
    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++) o[i] = 0.f;
    const u64 vdesc = sw128_descriptor(sV, 128 * 128, 1024);
    fence_registers<D / 2>(o);
    fence_registers<32>(&a[0][0]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 8; kk++) Wgmma<T, D>::rs_nmajor(o, a[kk], desc_plus(vdesc, kk * 16 * 128));
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers<D / 2>(o);
    fence_registers<32>(&a[0][0]);
#pragma unroll
    for (int j = 0; j < D / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) o_out[(warp * 16 + g + 8 * (e >> 1)) * D + j * 8 + 2 * c4 + (e & 1)] = o[4 * j + e];
}

// dQ (64 x 64) = dS (64 x 64 keys) K (64 keys x 64), dS given as dS^T (keys x queries) and both read transposed.
template <typename T>
__device__ void probe_dq(const T* dst_, const T* k, float* out)
{
    extern __shared__ unsigned char smem_raw[];
    const unsigned sS = (smem_u32(smem_raw) + 1023u) & ~1023u, sK = sS + 64 * 64 * 2;
    const int tid = threadIdx.x, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
    load_tile_sw128<64, 64, 256>(sS, dst_, 64, 0, 64, tid);
    load_tile_sw128<64, 64, 256>(sK, k, 64, 0, 64, tid);
    cp_async_commit();
    cp_async_wait<0>();
    fence_async_shared();
    __syncthreads();
    if (tid >= 128) return;
    float acc[32];
    const u64 sdesc = sw128_descriptor(sS, 64 * 128, 1024), kdesc = sw128_descriptor(sK, 64 * 128, 1024);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) WgmmaT<T>::ss_mn(acc, desc_plus(sdesc, kk * 16 * 128), desc_plus(kdesc, kk * 16 * 128), kk > 0);
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers<32>(acc);
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) out[(warp * 16 + g + 8 * (e >> 1)) * 64 + j * 8 + 2 * c4 + (e & 1)] = acc[4 * j + e];
}

extern "C" __global__ void __launch_bounds__(256) probe_qk_bf16_d64(const bf16* q, const bf16* k, float* s) { probe_qk<bf16, 64>(q, k, s); }
extern "C" __global__ void __launch_bounds__(256) probe_qk_bf16_d128(const bf16* q, const bf16* k, float* s) { probe_qk<bf16, 128>(q, k, s); }
extern "C" __global__ void __launch_bounds__(256) probe_pv_bf16_d64(const bf16* p, const bf16* v, float* o) { probe_pv<bf16, 64>(p, v, o); }
extern "C" __global__ void __launch_bounds__(256) probe_pv_bf16_d128(const bf16* p, const bf16* v, float* o) { probe_pv<bf16, 128>(p, v, o); }
extern "C" __global__ void __launch_bounds__(256) probe_dq_bf16(const bf16* s, const bf16* k, float* o) { probe_dq<bf16>(s, k, o); }
