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
