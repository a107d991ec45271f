/* elementwise.cl: grids are rounded up, so every kernel checks N. The gated activations take
 * eight values per work-item (float8 arithmetic, exp8; the last, ragged eight one by one). */

kernel void silu_mul(global const float *G, global const float *U, global float *Y, const int N) {
    const int i = 8 * get_global_id(0);
    if (i + 8 <= N) {
        const float8 g = ld8f(G + i);
        vstore8(SILU(g, exp8) * ld8f(U + i), 0, Y + i);
    } else {
        for (int j = i; j < N; ++j) Y[j] = SILU(G[j], exp1) * U[j];
    }
}

/* gelu (tanh approximation) of g, times u; c = sqrt(2 / pi) rounded to float by the host */
kernel void gelu_mul(global const float *G, global const float *U, global float *Y, const int N,
                     const float c) {
    const int i = 8 * get_global_id(0);
    if (i + 8 <= N) {
        const float8 g = ld8f(G + i);
        vstore8(GELU(g, c, exp8) * ld8f(U + i), 0, Y + i);
    } else {
        for (int j = i; j < N; ++j) Y[j] = GELU(G[j], c, exp1) * U[j];
    }
}

kernel void add(global const float *A, global const float *B, global float *Y, const int N) {
    const int i = get_global_id(0);
    if (i >= N) return;
    Y[i] = A[i] + B[i];
}

kernel void scale(global const float *X, global float *Y, const int N, const float s) {
    const int i = get_global_id(0);
    if (i >= N) return;
    Y[i] = X[i] * s;
}
