/* attention.cl: causal attention of n queries (positions pos..pos+n-1) over the first T
 * positions of a device-resident KV cache (K, V: (n_ctx, Hkv, hd)), in three launches:
 * attn_scores -> softmax (norm.cl, in place on S) -> attn_values. S is (n, H, T).
 * Query head h reads KV head h / (H / Hkv). window < 0: no sliding window; else key j is
 * visible to query position p when p - j < window. */

kernel void attn_scores(global const float *Q, global const float *K, global float *S,
                        const int H, const int Hkv, const int hd, const int pos, const int T,
                        const float scale, const int window) {
    const int j = get_global_id(0), ih = get_global_id(1);
    if (j >= T) return;
    const int i = ih / H, h = ih % H, kh = h / (H / Hkv), qp = pos + i;
    float s = -INFINITY;
    if (j <= qp && (window < 0 || qp - j < window)) {
        global const float *q = Q + (size_t)ih * hd;
        global const float *k = K + ((size_t)j * Hkv + kh) * hd;
        float a = 0.0f;
        for (int d = 0; d < hd; ++d) a += q[d] * k[d];
        s = a * scale;
    }
    S[(size_t)ih * T + j] = s;
}

kernel void attn_values(global const float *P, global const float *V, global float *O,
                        const int H, const int Hkv, const int hd, const int pos, const int T,
                        const int window) {
    const int d = get_global_id(0), ih = get_global_id(1);
    if (d >= hd) return;
    const int i = ih / H, h = ih % H, kh = h / (H / Hkv), qp = pos + i;
    const int j0 = window < 0 ? 0 : max(0, qp - window + 1), j1 = min(T, qp + 1);
    global const float *p = P + (size_t)ih * T;
    float a = 0.0f;
    for (int j = j0; j < j1; ++j) a += p[j] * V[((size_t)j * Hkv + kh) * hd + d];
    O[(size_t)ih * hd + d] = a;
}
