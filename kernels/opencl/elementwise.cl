/* elementwise.cl: one value per work-item; grids are rounded up, so every kernel checks N. */

kernel void silu_mul(global const float *G, global const float *U, global float *Y, const int N) {
    const int i = get_global_id(0);
    if (i >= N) return;
    const float g = G[i];
    Y[i] = g / (1.0f + exp(-g)) * U[i];
}

/* gelu (tanh approximation) of g, times u; c = sqrt(2 / pi) rounded to float by the host */
kernel void gelu_mul(global const float *G, global const float *U, global float *Y, const int N,
                     const float c) {
    const int i = get_global_id(0);
    if (i >= N) return;
    const float g = G[i];
    Y[i] = 0.5f * g * (1.0f + tanh(c * (g + 0.044715f * g * g * g))) * U[i];
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
