// lossc CUDA prelude: the helpers every generated kernel uses. Plain CUDA C++ (NVRTC compiles it with no
// headers); the emulation header of the tests defines the same built-ins on the host.
//
// Numerics follow the JIT: f32 elementwise arithmetic, reductions accumulated in f64 (sum, mean, prod,
// logsumexp's sum), max/min/clamp/relu propagating NaN as the interpreter does, sigmoid and softplus in
// their stable forms. Block reductions combine per-thread partials in a fixed order (a warp-shuffle tree,
// then the warps' results in warp order), so a result depends on the block size only through rounding.

#define LX_INF __int_as_float(0x7f800000)
#ifndef LX_DYNAMIC_SHARED
#define LX_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif
#define LX_NAN __int_as_float(0x7fffffff)

__device__ __forceinline__ float lx_max(float a, float b) { return a != a ? a : (b != b ? b : (a > b ? a : b)); }
__device__ __forceinline__ float lx_min(float a, float b) { return a != a ? a : (b != b ? b : (a < b ? a : b)); }
__device__ __forceinline__ long long lx_maxi(long long a, long long b) { return a > b ? a : b; }
__device__ __forceinline__ long long lx_mini(long long a, long long b) { return a < b ? a : b; }
__device__ __forceinline__ float lx_relu(float x) { return x > 0.0f || x != x ? x : 0.0f; }
__device__ __forceinline__ float lx_clamp(float x, float lo, float hi) { return x != x ? x : lx_min(lx_max(x, lo), hi); }
__device__ __forceinline__ float lx_sign(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x * 0.0f); }
__device__ __forceinline__ long long lx_signi(long long x) { return (long long)(x > 0) - (long long)(x < 0); }
__device__ __forceinline__ long long lx_absi(long long x) { return x < 0 ? -x : x; }
// `%` as Python computes it (the divisor's sign; `x % 0` is x); floats as x - y floor(x / y).
__device__ __forceinline__ long long lx_remi(long long x, long long y) {
    if (y == 0) return x;
    if (y == -1) return 0;
    long long r = x % y;
    return r != 0 && ((r < 0) != (y < 0)) ? r + y : r;
}
__device__ __forceinline__ float lx_remf(float x, float y) { return x - y * floorf(x / y); }
// Random draws (`rand`, `randn`): the key of a stream and Philox4x32-10, as prims::mix / prims::philox.
__device__ __forceinline__ unsigned long long lx_splitmix(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
__device__ __forceinline__ long long lx_mix(long long a, long long b) {
    return (long long)lx_splitmix((unsigned long long)a ^ lx_splitmix((unsigned long long)b));
}
__device__ __forceinline__ float lx_draw(long long key, long long c0, long long c1, long long c2, long long c3, long long word) {
    unsigned int k0 = (unsigned int)key, k1 = (unsigned int)((unsigned long long)key >> 32);
    unsigned int c[4] = {(unsigned int)c0, (unsigned int)c1, (unsigned int)c2, (unsigned int)c3};
    for (int round = 0; round < 10; round++) {
        if (round > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
        const unsigned long long p0 = 0xD2511F53ull * c[0], p1 = 0xCD9E8D57ull * c[2];
        const unsigned int n0 = (unsigned int)(p1 >> 32) ^ c[1] ^ k0, n2 = (unsigned int)(p0 >> 32) ^ c[3] ^ k1;
        c[0] = n0; c[1] = (unsigned int)p1; c[2] = n2; c[3] = (unsigned int)p0;
    }
    return (float)((c[word & 3] >> 8) + 1u) * (1.0f / 16777216.0f);
}
// A float rounded to an index: saturating, NaN to 0 (as the JIT's conversion and Rust's `as`).
__device__ __forceinline__ long long lx_toint(float x) {
    if (x != x) return 0;
    if (x >= 9.2233720368547758e18f) return 9223372036854775807LL;
    if (x <= -9.2233720368547758e18f) return (-9223372036854775807LL - 1);
    return (long long)x;
}
__device__ __forceinline__ float lx_sigmoid(float x) {
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    float e = expf(x);
    return e / (1.0f + e);
}
__device__ __forceinline__ float lx_softplus(float x) { return (x > 0.0f ? x : 0.0f) + log1pf(expf(-fabsf(x))); }

// Half-precision storage (inputs declared bf16 / f16 and their gradients): converted to and from f32
// by bits, rounding to nearest even, as the host's `half` crate does.
__device__ __forceinline__ float lx_bf16_f32(unsigned short h) { return __uint_as_float(((unsigned int)h) << 16); }
__device__ __forceinline__ unsigned short lx_f32_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
__device__ __forceinline__ float lx_f16_f32(unsigned short h) {
    const unsigned int sign = ((unsigned int)h & 0x8000u) << 16, e = ((unsigned int)h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    if (e == 0u) return __uint_as_float(sign) + (sign ? -1.0f : 1.0f) * (float)m * 5.9604644775390625e-8f;
    return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}
__device__ __forceinline__ unsigned short lx_f32_f16(float f) {
    const unsigned int u = __float_as_uint(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (unsigned short)(sign | 0x7e00u);
    if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);
    if (a < 0x38800000u) return (unsigned short)(sign | (unsigned int)rintf(__uint_as_float(a) * 16777216.0f));
    unsigned int r = a - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);
    return (unsigned short)(sign | (r >> 13));
}

// A subscript that is not statically inside its axis: in range it is returned; otherwise the first such
// failure of the launch is recorded (node + 1, axis, value; the host turns it into
// CallError::IndexOutOfRange) and 0 is returned, so no load ever leaves its buffer.
__device__ __forceinline__ long long lx_check(long long v, long long size, unsigned long long* err,
                                              unsigned long long node, unsigned long long axis) {
    if ((unsigned long long)v < (unsigned long long)size) return v;
    if (atomicCAS(err, 0ULL, node + 1) == 0ULL) {
        err[1] = axis;
        err[2] = (unsigned long long)v;
    }
    return 0;
}

// An arg-max/arg-min candidate: its value, its position (-1: none yet) and whether the value is NaN
// (the first NaN wins, as in the interpreter).
struct lx_arg {
    float v;
    long long p;
};
__device__ __forceinline__ lx_arg lx_arg_pick(lx_arg a, lx_arg b, bool max) {
    if (b.p < 0) return a;
    if (a.p < 0) return b;
    bool an = a.v != a.v, bn = b.v != b.v;
    if (an || bn) return an && (!bn || a.p < b.p) ? a : b;
    if (a.v == b.v) return a.p < b.p ? a : b;
    return (max ? a.v > b.v : a.v < b.v) ? a : b;
}

__device__ __forceinline__ double lx_shfl_down(double v, int o) { return __shfl_down_sync(0xffffffffu, v, o); }
__device__ __forceinline__ float lx_shfl_down(float v, int o) { return __shfl_down_sync(0xffffffffu, v, o); }
__device__ __forceinline__ long long lx_shfl_down(long long v, int o) { return __shfl_down_sync(0xffffffffu, v, o); }
__device__ __forceinline__ lx_arg lx_shfl_down(lx_arg v, int o) {
    lx_arg r;
    r.v = __shfl_down_sync(0xffffffffu, v.v, o);
    r.p = __shfl_down_sync(0xffffffffu, v.p, o);
    return r;
}

// A running logsumexp (for a body too costly to evaluate twice): the maximum so far and the sum of
// exp(x - max) in f64, rescaled when the maximum grows. NaN is sticky, then +inf; -inf adds nothing.
struct lx_lse {
    float m;
    double s;
};
__device__ __forceinline__ lx_lse lx_lse_push(lx_lse a, float v) {
    if (a.m != a.m || v != v) { a.m = LX_NAN; return a; }
    if (a.m == LX_INF || v == LX_INF) { a.m = LX_INF; return a; }
    if (v == -LX_INF) return a;
    if (v > a.m) { a.s = a.s * (double)expf(a.m - v) + 1.0; a.m = v; }
    else a.s += (double)expf(v - a.m);
    return a;
}
__device__ __forceinline__ lx_lse lx_lse_join(lx_lse a, lx_lse b) {
    if (a.m != a.m || b.m != b.m) { a.m = LX_NAN; return a; }
    if (a.m == LX_INF || b.m == LX_INF) { a.m = LX_INF; return a; }
    if (b.m == -LX_INF) return a;
    if (a.m == -LX_INF) return b;
    if (a.m >= b.m) { a.s += b.s * (double)expf(b.m - a.m); return a; }
    b.s += a.s * (double)expf(a.m - b.m);
    return b;
}
__device__ __forceinline__ float lx_lse_value(lx_lse a) {
    return (a.m != a.m || a.m == LX_INF || a.m == -LX_INF) ? a.m : (float)((double)a.m + log(a.s));
}
// What f32 rounds off the value (0 where it is not finite): the plan's logsumexp residual.
__device__ __forceinline__ float lx_lse_residual(lx_lse a) {
    if (a.m != a.m || a.m == LX_INF || a.m == -LX_INF) return 0.0f;
    const double r = (double)a.m + log(a.s);
    return (float)(r - (double)(float)r);
}
__device__ __forceinline__ lx_lse lx_shfl_down(lx_lse v, int o) {
    lx_lse r;
    r.m = __shfl_down_sync(0xffffffffu, v.m, o);
    r.s = __shfl_down_sync(0xffffffffu, v.s, o);
    return r;
}

__device__ __forceinline__ double lx_shfl_first(double v) { return __shfl_sync(0xffffffffu, v, 0); }
__device__ __forceinline__ float lx_shfl_first(float v) { return __shfl_sync(0xffffffffu, v, 0); }
__device__ __forceinline__ long long lx_shfl_first(long long v) { return __shfl_sync(0xffffffffu, v, 0); }
__device__ __forceinline__ lx_arg lx_shfl_first(lx_arg v) {
    v.v = __shfl_sync(0xffffffffu, v.v, 0);
    v.p = __shfl_sync(0xffffffffu, v.p, 0);
    return v;
}
__device__ __forceinline__ lx_lse lx_shfl_first(lx_lse v) {
    v.m = __shfl_sync(0xffffffffu, v.m, 0);
    v.s = __shfl_sync(0xffffffffu, v.s, 0);
    return v;
}

// Combines one value per lane of a warp (every lane calling) in a fixed tree and returns the result to
// every lane (a row per warp: short rows).
template <typename T, typename F>
__device__ __forceinline__ T lx_warp_reduce(T v, F combine) {
    for (int o = 16; o > 0; o >>= 1) v = combine(v, lx_shfl_down(v, o));
    return lx_shfl_first(v);
}

// Combines one value per thread of the block (blockDim.x a multiple of 32, every thread calling) and
// returns the result to every thread. `scratch` holds 33 values in shared memory.
template <typename T, typename F>
__device__ __forceinline__ T lx_block_reduce(T v, F combine, T* scratch) {
    for (int o = 16; o > 0; o >>= 1) v = combine(v, lx_shfl_down(v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        T a = scratch[0];
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w) a = combine(a, scratch[w]);
        scratch[32] = a;
    }
    __syncthreads();
    return scratch[32];
}

struct lx_add_d { __device__ double operator()(double a, double b) const { return a + b; } };
struct lx_mul_d { __device__ double operator()(double a, double b) const { return a * b; } };
struct lx_add_i { __device__ long long operator()(long long a, long long b) const { return a + b; } };
struct lx_max_f { __device__ float operator()(float a, float b) const { return lx_max(a, b); } };
struct lx_min_f { __device__ float operator()(float a, float b) const { return lx_min(a, b); } };
struct lx_argmax { __device__ lx_arg operator()(lx_arg a, lx_arg b) const { return lx_arg_pick(a, b, true); } };
struct lx_argmin { __device__ lx_arg operator()(lx_arg a, lx_arg b) const { return lx_arg_pick(a, b, false); } };
struct lx_lse_f { __device__ lx_lse operator()(lx_lse a, lx_lse b) const { return lx_lse_join(a, b); } };
