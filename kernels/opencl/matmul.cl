/* matmul.cl: y = x @ W.T straight from the raw GGUF blocks (no dequantized copy anywhere).
 *
 * A work-group is a (LX, LY) tile: LY rows of W, LX work-items per row striding over that
 * row's 32-weight units, for a tile of TILE tokens. A work-item dequantizes a unit once into
 * registers (four float8) and uses it for every token of the tile, so a prompt reads each
 * weight once per TILE tokens; it keeps float8 running sums and adds their lanes once at the
 * end. The LX partial sums of a row meet in a tree reduction in local memory (`red`:
 * TILE * LX * LY floats; LX a power of two). Rows past the end (rows not a multiple of LY)
 * compute nothing but still reach every barrier.
 * Grid: (LX, rows rounded up to LY, ceil(n / TILE)).
 * Two tiles per type: matmul_<type> (TILE = NT tokens, prompts) and matvec_<type> (TILE = 1,
 * decode), from one body whose `tile` argument is a constant at each call. */

#ifndef NT
#define NT 8
#endif

inline void matmul_tile(const int qt, const int tile, gbytes W, const int row_bytes, const int cols,
                        const int rows, global const float *X, const int n, global float *Y,
                        local float *red) {
    const int lx = get_local_id(0), LX = get_local_size(0);
    const int ly = get_local_id(1), LY = get_local_size(1);
    const int r = get_global_id(1);
    const int t0 = get_group_id(2) * tile;
    const int nt = min(tile, n - t0);
    local float *part = red + ly * LX * tile;  /* this row's partial sums: [t * LX + lx] */

    float8 acc[NT];
    for (int t = 0; t < tile; ++t) acc[t] = (float8)(0.0f);
    if (r < rows) {
        gbytes row = W + (size_t)r * row_bytes;
        global const float *x0 = X + (size_t)t0 * cols;
        float8 w[4];
        const int units = (cols + 31) / 32;
        for (int u = lx; u < units; u += LX) {
            const int nv = min(32, cols - 32 * u);
            deq32(qt, row, u, nv, w);
            for (int t = 0; t < tile; ++t)
                if (t < nt) acc[t] += dot32v(w, x0 + (size_t)t * cols + 32 * u, nv);
        }
    }
    for (int t = 0; t < tile; ++t) part[t * LX + lx] = hsum8(acc[t]);
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = LX >> 1; s > 0; s >>= 1) {
        if (lx < s)
            for (int t = 0; t < tile; ++t) part[t * LX + lx] += part[t * LX + lx + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (r < rows)
        for (int t = lx; t < nt; t += LX) Y[(size_t)(t0 + t) * rows + r] = part[t * LX];
}

#define MATMUL_KERNELS(name, qt)                                                                 \
    kernel void matmul_##name(global const uchar *W, const int row_bytes, const int cols,       \
                              const int rows, global const float *X, const int n,               \
                              global float *Y, local float *red) {                              \
        matmul_tile(qt, NT, W, row_bytes, cols, rows, X, n, Y, red);                            \
    }                                                                                            \
    kernel void matvec_##name(global const uchar *W, const int row_bytes, const int cols,       \
                              const int rows, global const float *X, const int n,               \
                              global float *Y, local float *red) {                              \
        matmul_tile(qt, 1, W, row_bytes, cols, rows, X, n, Y, red);                             \
    }
FOR_EACH_WEIGHT_TYPE(MATMUL_KERNELS)
