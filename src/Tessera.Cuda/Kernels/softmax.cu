// Row softmax and fused softmax cross-entropy: one block per row, fp32 math.

template <typename T> __device__ void softmax_row(const T* x, T* out, int V)
{
    i64 row = blockIdx.x;
    x += row * V; out += row * V;
    float m = NEG_INF;
    for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, to_f(x[i]));
    m = block_max(m);
    float s = 0.f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) s += expf(to_f(x[i]) - m);
    s = block_sum(s);
    float inv = 1.f / s;
    for (int i = threadIdx.x; i < V; i += blockDim.x) out[i] = from_f<T>(expf(to_f(x[i]) - m) * inv);
}

// losses[row] = logsumexp(x) - x[target]; dlogits (may alias logits) = (softmax - onehot) * scale.
// A negative target ignores the row (loss 0, gradient 0); a target >= V gives a NaN loss.
template <typename T> __device__ void cross_entropy_row(const T* x, const int* targets, float* losses, T* dl, int V, float scale)
{
    i64 row = blockIdx.x;
    x += row * V;
    if (dl) dl += row * V;
    int target = targets[row];
    if (target < 0)
    {
        if (threadIdx.x == 0) losses[row] = 0.f;
        if (dl) for (int i = threadIdx.x; i < V; i += blockDim.x) dl[i] = from_f<T>(0.f);
        return;
    }
    bool inRange = target < V;
    float xt = inRange ? to_f(x[target]) : 0.f; // read before any thread overwrites (dl may alias x)
    float m = NEG_INF;
    for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, to_f(x[i]));
    m = block_max(m);
    float s = 0.f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) s += expf(to_f(x[i]) - m);
    s = block_sum(s); // its barriers also order every read above before the writes below
    if (threadIdx.x == 0) losses[row] = inRange ? logf(s) + m - xt : QNAN;
    if (dl)
    {
        float inv = 1.f / s;
        for (int i = threadIdx.x; i < V; i += blockDim.x)
        {
            float p = expf(to_f(x[i]) - m) * inv;
            dl[i] = from_f<T>((p - (i == target ? 1.f : 0.f)) * scale);
        }
    }
}

#define SOFTMAX(n, T)                                                                                  \
    extern "C" __global__ void softmax_##n(const T* x, T* out, int V) { softmax_row<T>(x, out, V); }  \
    extern "C" __global__ void cross_entropy_##n(const T* x, const int* targets, float* losses, T* dl, \
                                                 int V, float scale)                                   \
    {                                                                                                  \
        cross_entropy_row<T>(x, targets, losses, dl, V, scale);                                        \
    }
FOR_FLOAT_TYPES(SOFTMAX)
