/* attention.cl: causal attention of n queries (positions pos..pos+n-1) over the first T
 * positions of a device-resident KV cache (K, V: (n_ctx, Hkv, hd)), in four launches:
 * kv_store -> attn_scores -> softmax (norm.cl, in place on S) -> attn_values. S is (n, H, T)
 * for a chunk of queries that starts at float q_at of Q (n, H, hd) and o_at of O (n, H, hd).
 * Query head h reads KV head h / (H / Hkv). window < 0: no sliding window; else key j is
 * visible to query position p when p - j < window.
 * Grids: (T or hd rounded up to the local size, H, n): no index is split with / and %.
 *
 * One new token (decode) takes one launch instead: attn_decode, below (attn_decode_row on
 * CPU devices). */

/* Dot products of attention. One running sum, as these loops were written first, is a chain
 * of dependent adds (~4 cycles each on a CPU): that was most of a decode step's attention on
 * PoCL (~120 us a layer at 100 positions, ~400 at 500). Macros because a and b may be in
 * different address spaces (OpenCL 1.2 has no generic one).
 *
 * DOT_PARTS: out = sum of a[i] * b[i * stride] for i in [lo, hi) (the weighted sum of V over
 * positions, stride Hkv * hd), as eight partial sums (i = lo, lo + 8, ... in the first) added
 * pairwise at the end, then the tail. */
#define DOT_PARTS(a, b, stride, lo, hi, out)                                                      \
    {                                                                                             \
        float p0_ = 0.0f, p1_ = 0.0f, p2_ = 0.0f, p3_ = 0.0f, p4_ = 0.0f, p5_ = 0.0f, p6_ = 0.0f,  \
              p7_ = 0.0f;                                                                         \
        int i_ = (lo);                                                                            \
        for (; i_ + 8 <= (hi); i_ += 8) {                                                         \
            p0_ += (a)[i_] * (b)[(size_t)i_ * (stride)];                                          \
            p1_ += (a)[i_ + 1] * (b)[(size_t)(i_ + 1) * (stride)];                                \
            p2_ += (a)[i_ + 2] * (b)[(size_t)(i_ + 2) * (stride)];                                \
            p3_ += (a)[i_ + 3] * (b)[(size_t)(i_ + 3) * (stride)];                                \
            p4_ += (a)[i_ + 4] * (b)[(size_t)(i_ + 4) * (stride)];                                \
            p5_ += (a)[i_ + 5] * (b)[(size_t)(i_ + 5) * (stride)];                                \
            p6_ += (a)[i_ + 6] * (b)[(size_t)(i_ + 6) * (stride)];                                \
            p7_ += (a)[i_ + 7] * (b)[(size_t)(i_ + 7) * (stride)];                                \
        }                                                                                         \
        float r_ = ((p0_ + p1_) + (p2_ + p3_)) + ((p4_ + p5_) + (p6_ + p7_));                    \
        for (; i_ < (hi); ++i_) r_ += (a)[i_] * (b)[(size_t)i_ * (stride)];                       \
        out = r_;                                                                                 \
    }

/* DOT8: out = a . b over n contiguous floats (q . k over hd), eight lanes at a time (one
 * float8 running sum of LD8 loads, its lanes added once at the end), then the tail. */
#define DOT8(a, b, n, out)                                                                        \
    {                                                                                             \
        float8 v_ = 0.0f;                                                                         \
        int i_ = 0;                                                                               \
        for (; i_ + 8 <= (n); i_ += 8) v_ += LD8((a) + i_) * LD8((b) + i_);                       \
        float r_ = hsum8(v_);                                                                     \
        for (; i_ < (n); ++i_) r_ += (a)[i_] * (b)[i_];                                           \
        out = r_;                                                                                 \
    }

/* the new keys and values (N floats each) into the cache at float offset `at`. A kernel
 * rather than a host write at an offset: after one of those oclgrind 21.10 takes the rest of
 * the buffer for uninitialized; and it keeps k, v on the device once activations stay there */
kernel void kv_store(global const float *k, global const float *v, global float *K, global float *V,
                     const int at, const int N) {
    const int i = get_global_id(0);
    if (i >= N) return;
    K[at + i] = k[i];
    V[at + i] = v[i];
}

kernel void attn_scores(global const float *Q, const int q_at, global const float *K, global float *S,
                        const int H, const int Hkv, const int hd, const int pos, const int T,
                        const float scale, const int window) {
    const int j = get_global_id(0), h = get_global_id(1), i = get_global_id(2);
    if (j >= T) return;
    const int ih = i * H + h, kh = h / (H / Hkv), qp = pos + i;
    global float *s = S + (size_t)ih * T + j;
    if (j > qp || (window >= 0 && qp - j >= window)) {
        *s = -INFINITY;
        return;
    }
    global const float *q = Q + q_at + (size_t)ih * hd;
    global const float *k = K + ((size_t)j * Hkv + kh) * hd;
    float a;
    DOT8(q, k, hd, a)
    *s = a * scale;
}

/* WSUM8: out = sum of p[j] * v[j * stride + 0..7] for j in [j0, j1): eight consecutive output
 * values of a weighted sum of V rows (a float8 a position, two running sums) */
#define WSUM8(p, v, stride, j0, j1, out)                                                          \
    {                                                                                             \
        float8 a0_ = 0.0f, a1_ = 0.0f;                                                            \
        int j_ = (j0);                                                                            \
        for (; j_ + 2 <= (j1); j_ += 2) {                                                         \
            a0_ += (p)[j_] * ld8f((v) + (size_t)j_ * (stride));                                   \
            a1_ += (p)[j_ + 1] * ld8f((v) + (size_t)(j_ + 1) * (stride));                         \
        }                                                                                         \
        if (j_ < (j1)) a0_ += (p)[j_] * ld8f((v) + (size_t)j_ * (stride));                        \
        out = a0_ + a1_;                                                                          \
    }

/* Grid (hd / 8 + hd % 8, H, n): work-item x < hd / 8 takes the eight values 8x..8x+7 of its
 * query's output row (WSUM8), each later one a single value past the last multiple of 8
 * (DOT_PARTS). A value per work-item, as this kernel was first, ran as scalar strided loops
 * on PoCL: 10 ms of a 64-token SmolLM2 forward. */
kernel void attn_values(global const float *P, global const float *V, global float *O, const int o_at,
                        const int H, const int Hkv, const int hd, const int pos, const int T,
                        const int window) {
    const int x = get_global_id(0), h = get_global_id(1), i = get_global_id(2), n8 = hd / 8;
    if (x >= n8 + hd % 8) return;
    const int ih = i * H + h, kh = h / (H / Hkv), qp = pos + i;
    const int j0 = window < 0 ? 0 : max(0, qp - window + 1), j1 = min(T, qp + 1);
    global const float *p = P + (size_t)ih * T;
    global const float *vh = V + (size_t)kh * hd;
    global float *o = O + o_at + (size_t)ih * hd;
    const size_t stride = (size_t)Hkv * hd;
    if (x < n8) {
        float8 a;
        WSUM8(p, vh + 8 * x, stride, j0, j1, a)
        vstore8(a, 0, o + 8 * x);
    } else {
        const int d = 8 * n8 + (x - n8);
        float a;
        DOT_PARTS(p, vh + d, stride, j0, j1, a)
        o[d] = a;
    }
}

/* One new query (position pos, T = pos + 1) in one launch: store k, v at position pos and
 * attend. A work-group per query head h (grid (LS, H), LS a power of two): scores over the
 * T positions into its own row of S (H, T), softmax (max and sum through `red`, LS floats),
 * then the weighted sum of V, eight consecutive output values per work-item (float8 loads of
 * a cache row; a value per work-item for what hd leaves past a multiple of 8). The new key
 * and value are read from k, v (never from the cache, which another work-group is writing):
 * work-group h < Hkv stores those of KV head h; the cache is read at positions < pos only.
 * rot = 1: q and k arrive unrotated and are rotated here (rope.cl's arithmetic, cos/sin of
 * the position in CS): the two rope launches fused into this one. `qk` (2 hd floats) holds
 * this group's query and new key. Arithmetic as rope -> attn_scores -> softmax ->
 * attn_values, up to float rounding (the sums over positions are grouped differently: the
 * new position's value term last, two float8 running sums here, eight scalar ones there). */
kernel void attn_decode(global const float *Q, global const float *k, global const float *v,
                        global float *K, global float *V, global float *S, global float *O,
                        const int H, const int Hkv, const int hd, const int pos, const float scale,
                        const int window, global const float *CS, const int n_rot, const int neox,
                        const int rot, local float *red, local float *qk) {
    const int lid = get_local_id(0), LS = get_local_size(0), h = get_group_id(1);
    const int g = H / Hkv, kh = h / g, T = pos + 1;
    global const float *vn = v + (size_t)kh * hd;
    local float *q = qk, *kn = qk + hd;
    for (int d = lid; d < hd; d += LS) {
        q[d] = rot ? rope_value(Q + (size_t)h * hd, d, CS, n_rot, neox) : Q[(size_t)h * hd + d];
        kn[d] = rot ? rope_value(k + (size_t)kh * hd, d, CS, n_rot, neox) : k[(size_t)kh * hd + d];
        if (h < Hkv) {  /* work-group h stores KV head h (no h % g: oclgrind cannot check LLVM's freeze) */
            K[((size_t)pos * Hkv + h) * hd + d] =
                rot ? rope_value(k + (size_t)h * hd, d, CS, n_rot, neox) : k[(size_t)h * hd + d];
            V[((size_t)pos * Hkv + h) * hd + d] = v[(size_t)h * hd + d];
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    global float *s = S + (size_t)h * T;
    const int j0 = window < 0 ? 0 : max(0, pos - window + 1);
    float mx = -INFINITY;
    for (int j = lid; j < T; j += LS) {
        float a = -INFINITY;
        if (j >= j0) {
            if (j == pos)
                DOT8(q, kn, hd, a)
            else {
                global const float *kj = K + ((size_t)j * Hkv + kh) * hd;
                DOT8(q, kj, hd, a)
            }
            a *= scale;
        }
        s[j] = a;
        mx = fmax(mx, a);
    }
    wg_exp_normalize(s, s, T, wg_max(mx, red), red);
    barrier(CLK_GLOBAL_MEM_FENCE);  /* every p_j of the row written before any is read */
    /* the weighted sum of V: a work-item takes eight consecutive d at a time (a float8 a
     * position, two running sums), what hd leaves past a multiple of 8 one d at a time */
    const size_t stride = (size_t)Hkv * hd;
    global const float *vh = V + (size_t)kh * hd;
    for (int d = 8 * lid; d + 8 <= hd; d += 8 * LS) {
        float8 a;
        WSUM8(s, vh + d, stride, j0, pos, a)
        vstore8(a + s[pos] * ld8f(vn + d), 0, O + (size_t)h * hd + d);
    }
    for (int d = (hd & ~7) + lid; d < hd; d += LS) {
        float a;
        DOT_PARTS(s, vh + d, stride, j0, pos, a)
        O[(size_t)h * hd + d] = a + s[pos] * vn[d];
    }
}

/* The same on CPU devices, a work-item per query head (no barriers: PoCL ran attn_decode's
 * work-group as a loop per barrier region, ~20 of them a head, whatever the context length).
 * Launched as H work-groups of one, so that the device's threads share the heads. The query
 * and the new key (rotated here when rot = 1) stay in private arrays of HD_MAX floats (the
 * host uses attn_decode for larger heads); the first query head of each KV head stores that
 * head's new key and value. Scores in the head's row of S, e^(s - max) in place, then the
 * weighted sum of V eight values at a time, divided by the sum of the e's at the end.
 * Device time against attn_decode (in-process A/B, PoCL here): SmolLM2's heads (9 query, 3
 * KV, 64 values) at 16 / 100 / 400 positions 0.58 / 0.75 / 0.83x, Gemma 3's (4, 1, 256)
 * 0.86 / 0.95 / 0.94x. */
#ifndef HD_MAX
#define HD_MAX 256
#endif
kernel void attn_decode_row(global const float *Q, global const float *k, global const float *v,
                            global float *K, global float *V, global float *S, global float *O,
                            const int H, const int Hkv, const int hd, const int pos, const float scale,
                            const int window, global const float *CS, const int n_rot, const int neox,
                            const int rot) {
    const int h = get_global_id(0);
    if (h >= H) return;
    const int g = H / Hkv, kh = h / g, T = pos + 1;
    global const float *qh = Q + (size_t)h * hd, *kk = k + (size_t)kh * hd, *vn = v + (size_t)kh * hd;
    float q[HD_MAX], kn[HD_MAX];
    for (int d = 0; d < hd; ++d) {
        q[d] = rot ? rope_value(qh, d, CS, n_rot, neox) : qh[d];
        kn[d] = rot ? rope_value(kk, d, CS, n_rot, neox) : kk[d];
    }
    if (h == kh * g)  /* the first query head of its KV head (no h % g: see attn_decode) */
        for (int d = 0; d < hd; ++d) {
            K[((size_t)pos * Hkv + kh) * hd + d] = kn[d];
            V[((size_t)pos * Hkv + kh) * hd + d] = vn[d];
        }
    global float *s = S + (size_t)h * T;
    const int j0 = window < 0 ? 0 : max(0, pos - window + 1);
    float mx = -INFINITY;
    for (int j = j0; j < T; ++j) {
        float a;
        if (j == pos)
            DOT8(q, kn, hd, a)
        else {
            global const float *kj = K + ((size_t)j * Hkv + kh) * hd;
            DOT8(q, kj, hd, a)
        }
        s[j] = a * scale;
        mx = fmax(mx, s[j]);
    }
    float sum = 0.0f;
    for (int j = j0; j < T; ++j) {
        const float e = exp1(s[j] - mx);
        s[j] = e;
        sum += e;
    }
    const float inv = 1.0f / sum;
    const size_t stride = (size_t)Hkv * hd;
    global const float *vh = V + (size_t)kh * hd;
    global float *o = O + (size_t)h * hd;
    for (int d = 0; d + 8 <= hd; d += 8) {
        float8 a;
        WSUM8(s, vh + d, stride, j0, pos, a)
        vstore8((a + s[pos] * ld8f(vn + d)) * inv, 0, o + d);
    }
    for (int d = hd & ~7; d < hd; ++d) {
        float a;
        DOT_PARTS(s, vh + d, stride, j0, pos, a)
        o[d] = (a + s[pos] * vn[d]) * inv;
    }
}
