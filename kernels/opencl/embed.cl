/* embed.cl: y[t] = row ids[t] of W, dequantized by the shared block readers.
 * Grid: (units per row, rounded up to the local size; n tokens). */

inline void embed_rows(const int qt, gbytes W, const int row_bytes, const int cols,
                       global const int *ids, global float *Y) {
    const int u = get_global_id(0), t = get_global_id(1);
    if (32 * u >= cols) return;
    const int nv = min(32, cols - 32 * u);
    float8 w[4];
    deq32(qt, W + (size_t)ids[t] * row_bytes, u, nv, w);
    global float *y = Y + (size_t)t * cols + 32 * u;
    if (nv == 32) {
        for (int i = 0; i < 4; ++i) vstore8(w[i], i, y);
        return;
    }
    float v[32];
    for (int i = 0; i < 4; ++i) vstore8(w[i], i, v);
    for (int j = 0; j < nv; ++j) y[j] = v[j];
}

#define EMBED_KERNEL(name, qt)                                                                   \
    kernel void embed_##name(global const uchar *W, const int row_bytes, const int cols,        \
                             global const int *ids, global float *Y) {                          \
        embed_rows(qt, W, row_bytes, cols, ids, Y);                                             \
    }
FOR_EACH_WEIGHT_TYPE(EMBED_KERNEL)
