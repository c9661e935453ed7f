// Rotary position embedding in place on x (B, T, H, D), last dimension contiguous; Hugging Face
// Llama's "rotate half" pairs (i, i + D/2). Angles in fp64 so long positions keep their precision.
// Row (b, t) sits at position start + t, or starts[b] + t when starts (B) is given (a KV cache's lengths,
// read on the device so that a captured decode step serves every position).

template <typename T> __device__ void rope(T* x, int B, int Tn, int H, int D, i64 sb, i64 st, i64 sh, int start,
                                           double theta, int inverse, const int* starts)
{
    int half = D / 2;
    i64 n = (i64)B * Tn * H * half;
    GRID_STRIDE(idx, n)
    {
        i64 r = idx;
        int i = (int)(r % half); r /= half;
        int h = (int)(r % H); r /= H;
        int t = (int)(r % Tn); r /= Tn;
        int b = (int)r;
        double inv_freq = pow(theta, -2.0 * i / D);
        double s, c;
        sincos((double)((starts ? starts[b] : start) + t) * inv_freq, &s, &c);
        float cf = (float)c, sf = inverse ? -(float)s : (float)s;
        T* p = x + b * sb + (i64)t * st + (i64)h * sh;
        float x1 = to_f(p[i]), x2 = to_f(p[i + half]);
        p[i] = from_f<T>(x1 * cf - x2 * sf);
        p[i + half] = from_f<T>(x2 * cf + x1 * sf);
    }
}

#define ROPE(n, T)                                                                                      \
    extern "C" __global__ void rope_##n(T* x, int B, int Tn, int H, int D, i64 sb, i64 st, i64 sh,    \
                                        int start, double theta, int inverse, const int* starts)       \
    {                                                                                                   \
        rope<T>(x, B, Tn, H, D, sb, st, sh, start, theta, inverse, starts);                             \
    }
FOR_FLOAT_TYPES(ROPE)

// Rope and KV append in one launch (a decode step's attention prologue): qkv (B, T, H + 2K, D) holds the q, k and v
// heads of each row; the q and k heads are rotated in place at position starts[b] + t (as rope above), and the rotated
// k and the v heads are written to the cache (B, S, 2K, D) at that position (k heads first, as in qkv). One work item
// per pair (i, i + D/2) of one head of one row.
template <typename T> __device__ void rope_append(T* qkv, T* cache, const int* starts, int B, int Tn, int H, int K, int D,
    i64 sb, i64 st, i64 sh, i64 cb, i64 cs, i64 ch, double theta)
{
    const int half = D / 2, heads = H + 2 * K;
    const i64 n = (i64)B * Tn * heads * half;
    pdl_wait();
    pdl_launch_dependents();
    GRID_STRIDE(idx, n)
    {
        i64 r = idx;
        const int i = (int)(r % half); r /= half;
        const int hh = (int)(r % heads); r /= heads;
        const int t = (int)(r % Tn);
        const int b = (int)(r / Tn);
        const int pos = starts[b] + t;
        T* p = qkv + b * sb + (i64)t * st + (i64)hh * sh;
        T a = p[i], c = p[i + half];
        if (hh < H + K)
        {
            const double inv_freq = pow(theta, -2.0 * i / D);
            double s, co;
            sincos((double)pos * inv_freq, &s, &co);
            const float cf = (float)co, sf = (float)s, x1 = to_f(a), x2 = to_f(c);
            a = from_f<T>(x1 * cf - x2 * sf);
            c = from_f<T>(x2 * cf + x1 * sf);
            p[i] = a;
            p[i + half] = c;
        }
        if (hh >= H)
        {
            T* q = cache + b * cb + (i64)pos * cs + (i64)(hh - H) * ch;
            q[i] = a;
            q[i + half] = c;
        }
    }
}

#define ROPE_APPEND(n, T)                                                                                       \
    extern "C" __global__ void rope_append_##n(T* qkv, T* cache, const int* starts, int B, int Tn, int H, int K,  \
        int D, i64 sb, i64 st, i64 sh, i64 cb, i64 cs, i64 ch, double theta)                                    \
    {                                                                                                           \
        rope_append<T>(qkv, cache, starts, B, Tn, H, K, D, sb, st, sh, cb, cs, ch, theta);                      \
    }
FOR_FLOAT_TYPES(ROPE_APPEND)
