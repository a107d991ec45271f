/* matmul.cl: y = x @ W.T straight from the raw GGUF blocks (no dequantized copy anywhere).
 *
 * One work-group per (row of W, tile of NT tokens). Its work-items stride over the row's
 * 32-weight units: each dequantizes a unit once into registers and uses it for all NT
 * tokens of the tile, so a prompt reads each weight once per NT tokens. Partial sums meet
 * in a tree reduction in local memory (`red`: NT * local size floats, a power of two).
 * Grid: (rows * local size, ceil(n / NT)). */

#ifndef NT
#define NT 8
#endif

inline void matmul_rows(const int qt, gbytes W, const int row_bytes, const int cols, const int rows,
                        global const float *X, const int n, global float *Y, local float *red) {
    const int r = get_group_id(0), lid = get_local_id(0), ls = get_local_size(0);
    const int t0 = get_group_id(1) * NT;
    const int nt = min(NT, n - t0);
    gbytes row = W + (size_t)r * row_bytes;
    global const float *x0 = X + (size_t)t0 * cols;

    float acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    float w[32];
    const int units = (cols + 31) / 32;
    for (int u = lid; u < units; u += ls) {
        const int nv = min(32, cols - 32 * u);
        deq32(qt, row, u, nv, w);
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                global const float *x = x0 + (size_t)t * cols + 32 * u;
                float s = 0.0f;
                for (int j = 0; j < nv; ++j) s += w[j] * x[j];
                acc[t] += s;
            }
        }
    }

    for (int t = 0; t < NT; ++t) red[t * ls + lid] = acc[t];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = ls >> 1; s > 0; s >>= 1) {
        if (lid < s)
            for (int t = 0; t < NT; ++t) red[t * ls + lid] += red[t * ls + lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int t = lid; t < nt; t += ls) Y[(size_t)(t0 + t) * rows + r] = red[t * ls];
}

#define MATMUL_KERNEL(name, qt)                                                                  \
    kernel void matmul_##name(global const uchar *W, const int row_bytes, const int cols,       \
                              const int rows, global const float *X, const int n,               \
                              global float *Y, local float *red) {                              \
        matmul_rows(qt, W, row_bytes, cols, rows, X, n, Y, red);                                \
    }
FOR_EACH_WEIGHT_TYPE(MATMUL_KERNEL)
