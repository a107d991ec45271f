/* norm.cl: the row reductions. One work-group per row (`red` holds local-size floats), or, in
 * the `_row` kernels the host picks on CPU devices, one work-item per row. */

/* y = x * (1 / sqrt(mean(x^2) + eps)) * weight */
kernel void rms_norm(global const float *X, global const float *Wt, global float *Y,
                     const int d, const float eps, local float *red) {
    const int lid = get_local_id(0), ls = get_local_size(0);
    global const float *x = X + (size_t)get_group_id(0) * d;
    global float *y = Y + (size_t)get_group_id(0) * d;
    float s = 0.0f;
    for (int i = lid; i < d; i += ls) s += x[i] * x[i];
    const float ms = wg_sum(s, red) / (float)d;
    const float k = 1.0f / sqrt(ms + eps);
    for (int i = lid; i < d; i += ls) y[i] = x[i] * k * Wt[i];
}

/* s = a + b (stored: the residual stream), y = rms_norm(s) * weight: an add and the norm that
 * reads its result, in one launch; the same arithmetic as `add` then `rms_norm` */
kernel void add_rms_norm(global const float *A, global const float *B, global float *S,
                         global const float *Wt, global float *Y, const int d, const float eps,
                         local float *red) {
    const int lid = get_local_id(0), ls = get_local_size(0);
    const size_t at = (size_t)get_group_id(0) * d;
    float s = 0.0f;
    for (int i = lid; i < d; i += ls) {
        const float x = A[at + i] + B[at + i];
        S[at + i] = x;
        s += x * x;
    }
    const float ms = wg_sum(s, red) / (float)d;
    const float k = 1.0f / sqrt(ms + eps);
    for (int i = lid; i < d; i += ls) Y[at + i] = S[at + i] * k * Wt[i];
}

/* The same two with a work-item per row, eight values at a time: for CPU devices, where a
 * work-group per row paid its barriers for every row. Device time of a 64-token forward on
 * PoCL here: Gemma 3 (which normalizes each head's q and k) rms_norm 8.7 -> 1.5 ms,
 * add_rms_norm 3.9 -> 1.5; SmolLM2 add_rms_norm 5.6-6.5 -> 2.5; a decode launch 5.3 -> 2.8 us. */
inline float row_sumsq(global const float *x, const int d) {
    const int d8 = d & ~7;
    float8 s8 = 0.0f;
    for (int i = 0; i < d8; i += 8) {
        const float8 v = ld8f(x + i);
        s8 += v * v;
    }
    float s = hsum8(s8);
    for (int i = d8; i < d; ++i) s += x[i] * x[i];
    return s;
}

inline void row_scale(global const float *x, const float k, global const float *w, global float *y, const int d) {
    const int d8 = d & ~7;
    for (int i = 0; i < d8; i += 8) vstore8(ld8f(x + i) * k * ld8f(w + i), 0, y + i);
    for (int i = d8; i < d; ++i) y[i] = x[i] * k * w[i];
}

/* sums >= 0: also the row's unit sums (of its whole 32-value units) at Y + sums + r * (d / 32),
 * which the Q4_1 matvecs reading y take (matmul.cl, dot256_q4_1) instead of summing y again
 * for every row of weights */
inline void row_unit_sums(global const float *y, const int d, global float *s) {
    for (int u = 0; u < d / 32; ++u) s[u] = SUM32(y + 32 * u);
}

kernel void rms_norm_row(global const float *X, global const float *Wt, global float *Y, const int d,
                         const float eps, const int sums, const int rows) {
    const int r = get_global_id(0);
    if (r >= rows) return;
    global const float *x = X + (size_t)r * d;
    row_scale(x, 1.0f / sqrt(row_sumsq(x, d) / (float)d + eps), Wt, Y + (size_t)r * d, d);
    if (sums >= 0) row_unit_sums(Y + (size_t)r * d, d, Y + sums + (size_t)r * (d / 32));
}

kernel void add_rms_norm_row(global const float *A, global const float *B, global float *S,
                             global const float *Wt, global float *Y, const int d, const float eps,
                             const int sums, const int rows) {
    const int r = get_global_id(0);
    if (r >= rows) return;
    const size_t at = (size_t)r * d;
    const int d8 = d & ~7;
    for (int i = 0; i < d8; i += 8) vstore8(ld8f(A + at + i) + ld8f(B + at + i), 0, S + at + i);
    for (int i = d8; i < d; ++i) S[at + i] = A[at + i] + B[at + i];
    row_scale(S + at, 1.0f / sqrt(row_sumsq(S + at, d) / (float)d + eps), Wt, Y + at, d);
    if (sums >= 0) row_unit_sums(Y + at, d, Y + sums + (size_t)r * (d / 32));
}

/* y = exp(x - max x) / sum exp(x - max x) over rows of m; X may be Y (in place) */
kernel void softmax(global const float *X, global float *Y, const int m, local float *red) {
    const int lid = get_local_id(0), ls = get_local_size(0);
    global const float *x = X + (size_t)get_group_id(0) * m;
    global float *y = Y + (size_t)get_group_id(0) * m;
    float mx = -INFINITY;
    for (int i = lid; i < m; i += ls) mx = fmax(mx, x[i]);
    wg_exp_normalize(x, y, m, wg_max(mx, red), red);
}

/* The same with a work-item per row, eight values at a time (exp8) and the rest one by one:
 * for CPU devices, where a work-group per row paid its barriers and a scalar exp per value
 * (a 64-token SmolLM2 forward's 30 score softmaxes: 9.0 -> 1.2-2.1 ms of device time). */
kernel void softmax_row(global const float *X, global float *Y, const int m, const int rows) {
    const int r = get_global_id(0);
    if (r >= rows) return;
    global const float *x = X + (size_t)r * m;
    global float *y = Y + (size_t)r * m;
    const int m8 = m & ~7;
    float8 mx8 = -INFINITY;
    for (int i = 0; i < m8; i += 8) mx8 = fmax(mx8, ld8f(x + i));
    float mx = hmax8(mx8);
    for (int i = m8; i < m; ++i) mx = fmax(mx, x[i]);
    float8 s8 = 0.0f;
    for (int i = 0; i < m8; i += 8) {
        const float8 e = exp8(ld8f(x + i) - mx);
        vstore8(e, 0, y + i);
        s8 += e;
    }
    float s = hsum8(s8);
    for (int i = m8; i < m; ++i) {
        const float e = exp1(x[i] - mx);
        y[i] = e;
        s += e;
    }
    for (int i = 0; i < m8; i += 8) vstore8(ld8f(y + i) / s, 0, y + i);
    for (int i = m8; i < m; ++i) y[i] = y[i] / s;
}
