/* common.cl: prepended by the host to every kernel file (no #include, so every driver and
 * pyopencl's binary cache see one self-contained source).
 *
 * Portable OpenCL C 1.2: no extensions, work-group sizes chosen by the host from the device
 * (reductions need a power of two). Vectors are at most 8 lanes (PoCL 3.0's LLVM 14 crashed
 * on uint16 shifts) and never taken apart with .lo/.hi/.sN (oclgrind's --uninitialized
 * checker crashes on those).
 *
 * No vloadN / vload_half in inner loops: PoCL 3.0 calls them as out-of-line functions
 * (seen in the kernel's disassembly), which blocks vectorization and made every 32-weight
 * unit of a matvec pay for eight calls; vstore8 stays only where it runs once per row.
 * Vectors are built from scalar loads instead (`ld8f`, `ld8b`, ...: LLVM merges them into
 * one vector load; any alignment is fine) and halves are converted with integer operations
 * (`f16`: exact for every value, subnormals and inf/nan included).
 *
 * Holds what several programs share: the loaders, the work-group reductions and the GGUF
 * block readers. A block reader `deq32_<type>(row, u, w)` dequantizes weight unit `u` (32
 * consecutive weights) of one row of raw blocks into four float8 vectors, with exactly the
 * arithmetic, in the same order, of kernels/qtypes.py: results are bit-identical to the
 * numpy reference (hence FP_CONTRACT OFF: no fused multiply-add). */

#pragma OPENCL FP_CONTRACT OFF

/* GGML type ids (kernels/qtypes.py) of the types read here */
#define QT_F32 0
#define QT_F16 1
#define QT_Q4_0 2
#define QT_Q4_1 3
#define QT_Q5_0 6
#define QT_Q8_0 8
#define QT_Q4_K 12
#define QT_Q6_K 14

typedef global const uchar *gbytes;

/* the per-unit dot products must be inlined into the row loop: PoCL 3.0 left even the
 * smallest of them as calls. always_inline is a clang attribute (most OpenCL compilers are
 * clang-based); elsewhere plain inline. */
#if defined(__clang__)
#define HOT inline __attribute__((always_inline))
#else
#define HOT inline
#endif

/* IEEE half bits (the low 16 bits of h) -> float, exactly: sign, exponent and mantissa moved
 * into a float's bits, times 2^112 (rebiases the exponent; subnormal halves become normal
 * floats exactly; the sign rides along), inf/nan kept. */
inline float f16(uint h) {
    const uint bits = ((h & 0x8000u) << 16) | ((h & 0x7fffu) << 13);  /* sign survives the product */
    const float f = as_float(bits) * 0x1p112f;
    return (h & 0x7c00u) == 0x7c00u ? as_float(bits | 0x7f800000u) : f;  /* exponent 31: inf/nan */
}

inline float8 f16x8(ushort8 h) {
    const uint8 u = convert_uint8(h);
    const uint8 mag = (u & 0x7fffu) << 13;
    uint8 r = as_uint8(as_float8(mag) * 0x1p112f);
    r |= ((uint8)0u - (((u & 0x7c00u) + 0x0400u) >> 15)) & 0x7f800000u;  /* exponent 31: inf/nan */
    return as_float8(r | ((u & 0x8000u) << 16));
}

/* a little-endian f16 at a 2-byte aligned address (every scale field of every block is) */
inline float ld_f16(gbytes p) { return f16(*(global const ushort *)p); }

/* the f16 scales at p, p + bs, ..., p + 7 bs (one field of eight consecutive blocks of bs
 * bytes), converted as one float8: a matvec's eight units at a time (matmul.cl) */
inline float8 scales8(gbytes p, const int bs) {
    global const ushort *h = (global const ushort *)p;
    const int k = bs / 2;
    return f16x8((ushort8)(h[0], h[k], h[2 * k], h[3 * k], h[4 * k], h[5 * k], h[6 * k], h[7 * k]));
}

/* a little-endian u32 at any address (Q5_0 keeps one at byte 2 of a 22-byte block) */
inline uint ld_u32(gbytes p) {
    return (uint)p[0] | ((uint)p[1] << 8) | ((uint)p[2] << 16) | ((uint)p[3] << 24);
}

/* eight consecutive values from any address of their type */
/* (LD8: the same for floats in any address space, a macro as OpenCL 1.2 has no generic one) */
#define LD8(p) ((float8)((p)[0], (p)[1], (p)[2], (p)[3], (p)[4], (p)[5], (p)[6], (p)[7]))
inline float8 ld8f(global const float *p) { return LD8(p); }
/* the sum of one 32-value unit at p (any address space): the unit sums that the Q4_1
 * matvecs read (norm.cl's row kernels and matmul.cl's matvec_glu write them) */
#define SUM32(p) hsum8((LD8(p) + LD8((p) + 8)) + (LD8((p) + 16) + LD8((p) + 24)))
inline uchar8 ld8b(gbytes p) { return (uchar8)(p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]); }
inline char8 ld8c(global const char *p) { return (char8)(p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]); }
inline float8 ld8h(global const ushort *p) {
    return f16x8((ushort8)(p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]));
}

/* the sum of a vector's lanes, through a private array: once per row or token, where
 * vstore8's call costs nothing (oclgrind 21.10 --uninitialized crashes on .lo/.hi/.sN,
 * unions and pointer casts of vectors) */
inline float hsum8(float8 v) {
    float t[8];
    vstore8(v, 0, t);
    return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
}

/* ---- e^x and the gated activations, in float arithmetic only. PoCL 3.0 calls its exp and
 *      tanh builtins out of line, once per element (seen in the kernels' disassembly), which
 *      no loop around them can vectorize: a 64 x 1536 SiLU took ~400 us, ~77 us with exp8 on
 *      float8 (its own kernel here, A/B in one process). ---- */

/* e^x: x = n ln2 + r, |r| <= ln2 / 2 (n rounded with the 1.5 * 2^23 trick, at most 127; ln2 in
 * two parts so that n ln2 is exact), e^r by Cephes' expf polynomial, times 2^n made in the
 * exponent bits. Within 6 ulp of e^x for x in [-87.3, 88.7] (measured over 2 M points; libm:
 * 1-2); below 0, above inf, nan stays nan. exp1 for a float, exp8 for a float8. */
#define EXP_FN(name, T, N)                                                                         \
    inline T name(const T x) {                                                                    \
        const T n = fmin((x * 1.44269504088896341f + 12582912.0f) - 12582912.0f, 127.0f);         \
        const T r = (x - n * 0.693359375f) + n * 2.12194440e-4f;                                  \
        T p = 1.9875691500e-4f;                                                                   \
        p = p * r + 1.3981999507e-3f;                                                             \
        p = p * r + 8.3334519073e-3f;                                                             \
        p = p * r + 4.1665795894e-2f;                                                             \
        p = p * r + 1.6666665459e-1f;                                                             \
        p = p * r + 5.0000001201e-1f;                                                             \
        const T e = (p * r * r + r + 1.0f) * as_float##N((convert_int##N(n) + 127) << 23);        \
        return select(select(e, (T)(INFINITY), x > 88.72283f), (T)(0.0f), x < -87.33654f);        \
    }
EXP_FN(exp1, float, )
EXP_FN(exp8, float8, 8)

/* silu(g) = g / (1 + e^-g); gelu (tanh approximation) as g sigmoid(2z) = g / (1 + e^-2z),
 * z = c (g + 0.044715 g^3), c = sqrt(2 / pi) from the host: the same function as
 * g/2 (1 + tanh z) without tanh (numexpr's form too). act 0: silu, 1: gelu. */
#define SILU(g, EXP) ((g) / (1.0f + EXP(-(g))))
#define GELU(g, c, EXP) ((g) / (1.0f + EXP(-2.0f * (c) * ((g) + 0.044715f * (g) * (g) * (g)))))

/* the largest of a vector's lanes (as hsum8) */
inline float hmax8(float8 v) {
    float t[8];
    vstore8(v, 0, t);
    return fmax(fmax(fmax(t[0], t[1]), fmax(t[2], t[3])), fmax(fmax(t[4], t[5]), fmax(t[6], t[7])));
}

/* ---- work-group reductions (local size a power of two; every work-item gets the result;
 *      `red` holds get_local_size(0) floats and may be reused right after) ---- */

inline float wg_sum(float v, local float *red) {
    const int lid = get_local_id(0);
    red[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = get_local_size(0) >> 1; s > 0; s >>= 1) {
        if (lid < s) red[lid] += red[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float r = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

inline float wg_max(float v, local float *red) {
    const int lid = get_local_id(0);
    red[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = get_local_size(0) >> 1; s > 0; s >>= 1) {
        if (lid < s) red[lid] = fmax(red[lid], red[lid + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float r = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

/* the rest of a work-group softmax over n values whose max is mx: y = exp(x - mx) / sum of
 * them (the softmax kernel and decode attention; y may be x) */
inline void wg_exp_normalize(global const float *x, global float *y, const int n, const float mx,
                             local float *red) {
    const int lid = get_local_id(0), ls = get_local_size(0);
    float s = 0.0f;
    for (int i = lid; i < n; i += ls) {
        const float e = exp1(x[i] - mx);
        y[i] = e;
        s += e;
    }
    s = wg_sum(s, red);
    for (int i = lid; i < n; i += ls) y[i] = y[i] / s;
}

/* ---- rotary embedding: element e of one rotated head x (rope.cl; attention.cl rotates q
 *      and the new k on the fly). cs: cos and sin of the n_rot/2 pairs, interleaved. ---- */
inline float rope_value(global const float *x, const int e, global const float *cs, const int n_rot,
                        const int neox) {
    if (e >= n_rot)
        return x[e];
    const int nh = n_rot / 2;
    const int i = neox ? (e < nh ? e : e - nh) : e >> 1;
    const int first = neox ? e < nh : (e & 1) == 0;
    const int i0 = neox ? i : 2 * i, i1 = neox ? i + nh : 2 * i + 1;
    const float c = cs[2 * i], s = cs[2 * i + 1];
    return first ? x[i0] * c - x[i1] * s : x[i0] * s + x[i1] * c;
}

/* ---- block readers: unit u (32 weights) of a row of raw blocks -> w[0..3], four float8
 *      (weights 0-7, 8-15, 16-23, 24-31). Vectors of 8 let CPU compilers use 256-bit SIMD;
 *      GPUs scalarize them. ---- */

/* F32 / F16: a unit is 32 plain values; the last unit of a row may hold only `nv` (zeros after) */
inline void deq32_f32(gbytes row, int u, int nv, float8 *w) {
    global const float *p = (global const float *)row + 32 * u;
    if (nv == 32) {
#pragma unroll
        for (int i = 0; i < 4; ++i) w[i] = ld8f(p + 8 * i);
        return;
    }
    float t[32];  /* the last unit of a ragged row: once per row, vload8's call costs nothing */
    for (int j = 0; j < 32; ++j) t[j] = j < nv ? p[j] : 0.0f;
    for (int i = 0; i < 4; ++i) w[i] = vload8(i, t);
}

inline void deq32_f16(gbytes row, int u, int nv, float8 *w) {
    global const ushort *p = (global const ushort *)row + 32 * u;
    if (nv == 32) {
#pragma unroll
        for (int i = 0; i < 4; ++i) w[i] = ld8h(p + 8 * i);
        return;
    }
    float t[32];
    for (int j = 0; j < 32; ++j) t[j] = j < nv ? vload_half(j, (global const half *)p) : 0.0f;
    for (int i = 0; i < 4; ++i) w[i] = vload8(i, t);
}

/* ---- quants: the 32 integer weights of a unit as four int8 (weights 0-7, 8-15, 16-23,
 *      24-31) in 32-bit lanes: each eight bytes are widened once (one zero-extending load) and
 *      their fields taken with AND / shift / OR on 32-bit lanes, fewer instructions than on
 *      bytes. The matvec dot products (matmul.cl) take every type's from here, the block
 *      readers Q5_0's and Q6_K's: with these, 64-token products on the real weights
 *      (alternating in one process, PoCL here, before the readers' loops were unrolled) took
 *      ~0.9x the time for Q5_0 and Q6_K but ~1.1x for Q4_1 and Q4_K, whose readers keep their
 *      byte-lane code (and Q4_0's). ---- */

/* 16 bytes of 4-bit quants (Q4_0, Q4_1, Q5_0's low bits): low nibbles are weights 0-15,
 * high nibbles 16-31 */
HOT void quants_nibbles(gbytes qs, int8 *q) {
    const uint8 a = convert_uint8(ld8b(qs)), b = convert_uint8(ld8b(qs + 8));
    q[0] = as_int8(a & 15u);
    q[1] = as_int8(b & 15u);
    q[2] = as_int8(a >> 4);
    q[3] = as_int8(b >> 4);
}

/* Q5_0 block b (d:f16 qh:u32 qs[16]): the nibbles, and bit j of qh as the fifth bit of weight
 * j (qh shifted right by each lane's index puts bit j + 8k, run k's, at bit 8k of lane j) */
HOT void quants_q5_0(gbytes b, int8 *q) {
    const uint8 qh = (uint8)(ld_u32(b + 2)) >> (uint8)(0, 1, 2, 3, 4, 5, 6, 7);
    quants_nibbles(b + 6, q);
    q[0] |= as_int8((qh << 4) & 16u);
    q[1] |= as_int8((qh >> 4) & 16u);
    q[2] |= as_int8((qh >> 12) & 16u);
    q[3] |= as_int8((qh >> 20) & 16u);
}

/* Q4_K: 32 bytes of nibbles, the low ones (shift 0) or the high ones (shift 4) */
HOT void quants_q4_k(gbytes qs, const uint shift, int8 *q) {
#pragma unroll
    for (int i = 0; i < 4; ++i) q[i] = as_int8((convert_uint8(ld8b(qs + 8 * i)) >> shift) & 15u);
}

/* Q6_K: four bits of 32 ql bytes (from bit lshift) under two bits of 32 qh bytes (from bit
 * hshift) */
HOT void quants_q6_k(gbytes ql, gbytes qh, const uint lshift, const uint hshift, int8 *q) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
        q[i] = as_int8(((convert_uint8(ld8b(ql + 8 * i)) >> lshift) & 15u) |
                       (((convert_uint8(ld8b(qh + 8 * i)) >> hshift) & 3u) << 4));
}

/* Q4_0, 18 bytes: d:f16 qs[16]. w = (q - 8) * d */
inline void deq32_q4_0(gbytes row, int u, float8 *w) {
    gbytes b = row + 18 * u;
    const float d = ld_f16(b);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const uchar8 q = ld8b(b + 2 + 8 * i);
        w[i] = convert_float8(convert_int8(q & (uchar)15) - 8) * d;
        w[i + 2] = convert_float8(convert_int8(q >> (uchar)4) - 8) * d;
    }
}

/* Q4_1, 20 bytes: d:f16 m:f16 qs[16]. w = q * d + m */
inline void deq32_q4_1(gbytes row, int u, float8 *w) {
    gbytes b = row + 20 * u;
    const float d = ld_f16(b), m = ld_f16(b + 2);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const uchar8 q = ld8b(b + 4 + 8 * i);
        w[i] = convert_float8(q & (uchar)15) * d + m;
        w[i + 2] = convert_float8(q >> (uchar)4) * d + m;
    }
}

/* Q5_0, 22 bytes: d:f16 qh:u32 qs[16]. w = (q - 16) * d */
inline void deq32_q5_0(gbytes row, int u, float8 *w) {
    gbytes b = row + 22 * u;
    const float d = ld_f16(b);
    int8 q[4];
    quants_q5_0(b, q);
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = convert_float8(q[i] - 16) * d;
}

/* Q8_0, 34 bytes: d:f16 qs[32] (int8). w = q * d */
inline void deq32_q8_0(gbytes row, int u, float8 *w) {
    gbytes b = row + 34 * u;
    const float d = ld_f16(b);
    global const char *qs = (global const char *)(b + 2);
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = convert_float8(ld8c(qs + 8 * i)) * d;
}

/* Q4_K, 144 bytes: d:f16 dmin:f16 scales[12] qs[128]; unit = sub-block s (8 per block).
 * Six-bit scale and min of sub-block s: for s < 4 the low 6 bits of scales[s] and
 * scales[s + 4]; else the nibbles of scales[s + 4] below the top 2 bits of scales[s - 4]
 * and scales[s]. qs: 4 runs of 32 bytes, run s/2, low nibbles for even s, high for odd.
 * w = (d * scale) * q - (dmin * min) */
HOT void q4_k_scale_min(gbytes sc, const int s, int *scale, int *mn) {
    if (s < 4) {
        *scale = sc[s] & 63;
        *mn = sc[s + 4] & 63;
    } else {
        *scale = (sc[s + 4] & 15) | ((sc[s - 4] >> 6) << 4);
        *mn = (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
    }
}

/* unit u of a Q4_K row: its block b, sub-block s, scale and min, and its 32 bytes of nibbles
 * qs (the low ones for even s, the high ones for odd) */
#define Q4_K_UNIT(row, u)                                                                        \
    gbytes b = row + 144 * (u >> 3);                                                             \
    const int s = u & 7;                                                                         \
    int scale, mn;                                                                               \
    q4_k_scale_min(b + 4, s, &scale, &mn);                                                       \
    gbytes qs = b + 16 + 32 * (s >> 1);

inline void deq32_q4_k(gbytes row, int u, float8 *w) {
    Q4_K_UNIT(row, u)
    const float dl = ld_f16(b) * (float)scale, ml = ld_f16(b + 2) * (float)mn;
    const uchar shift = 4 * (s & 1);
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = dl * convert_float8((ld8b(qs + 8 * i) >> shift) & (uchar)15) - ml;
}

/* Q6_K, 210 bytes: ql[128] qh[64] scales[16] (int8) d:f16; 16 sub-blocks of 16 weights,
 * in two halves of 128. Unit s (8 per block) is quarter s&3 of half hb = s>>2: its low 4 bits
 * are the low (quarters 0, 1) or high (2, 3) nibbles of ql bytes 32*(s&1).. of the half, its
 * top 2 bits field s&3 of the half's 32 qh bytes. w = (d * scale) * (q - 32), one scale per
 * 16 weights: `scales` below are the unit's two. */
#define Q6_K_UNIT(row, u)                                                                        \
    gbytes b = row + 210 * (u >> 3);                                                             \
    const int s = u & 7, hb = s >> 2, quarter = s & 3;                                           \
    global const char *scales = (global const char *)(b + 192) + 8 * hb + 2 * quarter;          \
    int8 q[4];                                                                                   \
    quants_q6_k(b + 64 * hb + 32 * (quarter & 1), b + 128 + 32 * hb, 4 * (quarter >> 1), 2 * quarter, q);

inline void deq32_q6_k(gbytes row, int u, float8 *w) {
    Q6_K_UNIT(row, u)
    const float d = ld_f16(b + 208);
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = (d * (float)scales[i >> 1]) * convert_float8(q[i] - 32);
}

/* unit u of a row of type qt (a compile-time constant at every call: inlined (HOT), this folds) */
HOT void deq32(const int qt, gbytes row, int u, int nv, float8 *w) {
    switch (qt) {
    case QT_F32: deq32_f32(row, u, nv, w); break;
    case QT_F16: deq32_f16(row, u, nv, w); break;
    case QT_Q4_0: deq32_q4_0(row, u, w); break;
    case QT_Q4_1: deq32_q4_1(row, u, w); break;
    case QT_Q5_0: deq32_q5_0(row, u, w); break;
    case QT_Q8_0: deq32_q8_0(row, u, w); break;
    case QT_Q4_K: deq32_q4_k(row, u, w); break;
    case QT_Q6_K: deq32_q6_k(row, u, w); break;
    }
}

/* lane-wise products of a unit with x[0..nv) (nv <= 32; x holds only those values): sum
 * the lanes of a running total once, at the end, with hsum8 */
float8 dot32v_tail(const float8 *w, global const float *x, int nv) {  /* a ragged last unit */
    float t[32];
    for (int j = 0; j < 32; ++j) t[j] = j < nv ? x[j] : 0.0f;
    return w[0] * vload8(0, t) + w[1] * vload8(1, t) + w[2] * vload8(2, t) + w[3] * vload8(3, t);
}

HOT float8 dot32v(const float8 *w, global const float *x, int nv) {
    if (nv == 32)
        return w[0] * ld8f(x) + w[1] * ld8f(x + 8) + w[2] * ld8f(x + 16) + w[3] * ld8f(x + 24);
    return dot32v_tail(w, x, nv);
}

/* the kernel-name suffix and type id of every type read here, for per-type kernels */
#define FOR_EACH_WEIGHT_TYPE(X) \
    X(f32, QT_F32) X(f16, QT_F16) X(q4_0, QT_Q4_0) X(q4_1, QT_Q4_1) \
    X(q5_0, QT_Q5_0) X(q8_0, QT_Q8_0) X(q4_k, QT_Q4_K) X(q6_k, QT_Q6_K)
