// Rotary position embedding in place on x (B, T, H, D), last dimension contiguous; Hugging Face
// Llama's "rotate half" pairs (i, i + D/2). Angles in fp64 so long positions keep their precision; the frequencies come
// from a RopeFreq (common.cuh): a table, YaRN's cos/sin factor, dynamic NTK's per-call rule.
// Row (b, t) sits at position start + t, or starts[b] + t when starts (B) is given (a KV cache's lengths,
// read on the device so that a captured decode step serves every position).

template <typename T> __device__ void rope(T* x, int B, int Tn, int H, int D, i64 sb, i64 st, i64 sh, int start,
                                           RopeFreq f, int inverse, const int* starts)
{
    int half = D / 2;
    const int len = rope_length(f, starts, B, start, Tn);
    i64 n = (i64)B * Tn * H * half;
    GRID_STRIDE(idx, n)
    {
        i64 r = idx;
        int i = (int)(r % half); r /= half;
        int h = (int)(r % H); r /= H;
        int t = (int)(r % Tn); r /= Tn;
        int b = (int)r;
        float cf, sf, y1, y2;
        rope_angle_at((starts ? starts[b] : start) + t, rope_inv_freq(f, i, D, len), f.attention, cf, sf);
        if (inverse) sf = -sf;
        T* p = x + b * sb + (i64)t * st + (i64)h * sh;
        rope_rotate(to_f(p[i]), to_f(p[i + half]), cf, sf, y1, y2);
        p[i] = from_f<T>(y1);
        p[i + half] = from_f<T>(y2);
    }
}

#define ROPE(n, T)                                                                                      \
    extern "C" __global__ void rope_##n(T* x, int B, int Tn, int H, int D, i64 sb, i64 st, i64 sh,    \
                                        int start, RopeFreq f, int inverse, const int* starts)         \
    {                                                                                                   \
        rope<T>(x, B, Tn, H, D, sb, st, sh, start, f, inverse, starts);                                 \
    }
FOR_FLOAT_TYPES(ROPE)

// Rope and KV append in one launch (a decode step's attention prologue): qkv (B, T, H + 2K, D) holds the q, k and v
// heads of each row; the q and k heads are rotated in place at position starts[b] + t (as rope above), and the rotated
// k and the v heads are written to the cache (B, S, 2K, D) at that position (k heads first, as in qkv). One work item
// per pair (i, i + D/2) of one head of one row.
template <typename T> __device__ void rope_append(T* qkv, T* cache, const int* starts, int B, int Tn, int H, int K, int D,
    i64 sb, i64 st, i64 sh, i64 cb, i64 cs, i64 ch, RopeFreq f)
{
    const int half = D / 2, heads = H + 2 * K;
    const i64 n = (i64)B * Tn * heads * half;
    pdl_wait();
    pdl_launch_dependents();
    const int len = rope_length(f, starts, B, 0, Tn);
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
            float cf, sf, y1, y2;
            rope_angle_at(pos, rope_inv_freq(f, i, D, len), f.attention, cf, sf);
            rope_rotate(to_f(a), to_f(c), cf, sf, y1, y2);
            a = from_f<T>(y1);
            c = from_f<T>(y2);
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
        int D, i64 sb, i64 st, i64 sh, i64 cb, i64 cs, i64 ch, RopeFreq f)                                      \
    {                                                                                                           \
        rope_append<T>(qkv, cache, starts, B, Tn, H, K, D, sb, st, sh, cb, cs, ch, f);                          \
    }
FOR_FLOAT_TYPES(ROPE_APPEND)
