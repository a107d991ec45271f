/* matmul.cl: y = x @ W.T straight from the raw GGUF blocks (no dequantized copy anywhere).
 *
 * Prompts (matmul_<type>): a work-group is a (LX, LY) tile: LY rows of W, LX work-items per
 * row striding over that row's 32-weight units, for a tile of NT tokens. A work-item
 * dequantizes a unit once into registers (four float8) and uses it for every token of the
 * tile, so a prompt reads each weight once per NT tokens; it keeps float8 running sums and
 * adds their lanes once at the end. The LX partial sums of a row meet in a tree reduction in
 * local memory (`red`: NT * LX * LY floats; LX a power of two). Rows past the end (rows not
 * a multiple of LY) compute nothing but still reach every barrier.
 * Grid: (LX, rows rounded up to LY, ceil(n / NT)).
 *
 * One token (matvec_<type>, decode): the same (LX, LY) layout for one token, with `dot32`:
 * a unit's products with x without materializing the dequantized weights where the type
 * allows (Q4_0, Q4_1, Q8_0, Q4_K: the block scale multiplies the sum of q * x once, and
 * an offset m multiplies the sum of x once), else through the block reader. The host picks
 * LX per device: 1 on a CPU (a work-item walks a whole row; no reduction, no barrier is
 * reached: LX is the same for the whole group), MATMUL_LX elsewhere (GPUs: neighbouring
 * work-items read neighbouring blocks). Grid: (LX, rows rounded up to LY). */

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

/* unit u of a row times x[0..nv), as eight lane sums (qt is a constant at each call) */
inline float8 dot32(const int qt, gbytes row, const int u, const int nv, global const float *x) {
    if (qt == QT_Q4_0 || qt == QT_Q4_1 || qt == QT_Q8_0 || qt == QT_Q4_K) {
        const float8 x0 = ld8f(x), x1 = ld8f(x + 8), x2 = ld8f(x + 16), x3 = ld8f(x + 24);
        if (qt == QT_Q8_0) {  /* d * sum(q x) */
            gbytes b = row + 34 * u;
            global const char *qs = (global const char *)(b + 2);
            return ld_f16(b) * (convert_float8(ld8c(qs)) * x0 + convert_float8(ld8c(qs + 8)) * x1 +
                                convert_float8(ld8c(qs + 16)) * x2 + convert_float8(ld8c(qs + 24)) * x3);
        }
        if (qt == QT_Q4_0) {  /* d * sum((q - 8) x) */
            gbytes b = row + 18 * u;
            const uchar8 qa = ld8b(b + 2), qb = ld8b(b + 10);
            const int8 eight = 8;
            return ld_f16(b) * (convert_float8(convert_int8(qa & (uchar)15) - eight) * x0 +
                                convert_float8(convert_int8(qb & (uchar)15) - eight) * x1 +
                                convert_float8(convert_int8(qa >> (uchar)4) - eight) * x2 +
                                convert_float8(convert_int8(qb >> (uchar)4) - eight) * x3);
        }
        float d, m;  /* Q4_1, Q4_K: d * sum(q x) + m * sum(x) */
        uchar8 q0, q1, q2, q3;
        if (qt == QT_Q4_1) {
            gbytes b = row + 20 * u;
            d = ld_f16(b);
            m = ld_f16(b + 2);
            const uchar8 qa = ld8b(b + 4), qb = ld8b(b + 12);
            q0 = qa & (uchar)15;
            q1 = qb & (uchar)15;
            q2 = qa >> (uchar)4;
            q3 = qb >> (uchar)4;
        } else {  /* Q4_K sub-block u & 7: scale and min as in deq32_q4_k */
            gbytes b = row + 144 * (u >> 3);
            const int s = u & 7;
            gbytes sc = b + 4;
            int scale, mn;
            if (s < 4) {
                scale = sc[s] & 63;
                mn = sc[s + 4] & 63;
            } else {
                scale = (sc[s + 4] & 15) | ((sc[s - 4] >> 6) << 4);
                mn = (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
            }
            d = ld_f16(b) * (float)scale;
            m = -(ld_f16(b + 2) * (float)mn);
            gbytes qs = b + 16 + 32 * (s >> 1);
            const uchar shift = 4 * (s & 1);
            q0 = (ld8b(qs) >> shift) & (uchar)15;
            q1 = (ld8b(qs + 8) >> shift) & (uchar)15;
            q2 = (ld8b(qs + 16) >> shift) & (uchar)15;
            q3 = (ld8b(qs + 24) >> shift) & (uchar)15;
        }
        return d * (convert_float8(q0) * x0 + convert_float8(q1) * x1 + convert_float8(q2) * x2 +
                     convert_float8(q3) * x3) + m * ((x0 + x1) + (x2 + x3));
    }
    float8 w[4];
    deq32(qt, row, u, nv, w);
    return dot32v(w, x, nv);
}

inline void matvec_rows(const int qt, gbytes W, const int row_bytes, const int cols, const int rows,
                        global const float *X, global float *Y, local float *red) {
    const int lx = get_local_id(0), LX = get_local_size(0);
    const int r = get_global_id(1);
    float8 acc = 0.0f;
    if (r < rows) {
        gbytes row = W + (size_t)r * row_bytes;
        const int units = (cols + 31) / 32;
        for (int u = lx; u < units; u += LX) acc += dot32(qt, row, u, min(32, cols - 32 * u), X + 32 * u);
    }
    const float s = hsum8(acc);
    if (LX == 1) {  /* uniform over the group: no work-item reaches the barriers below */
        if (r < rows) Y[r] = s;
        return;
    }
    local float *part = red + get_local_id(1) * LX;
    part[lx] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k = LX >> 1; k > 0; k >>= 1) {
        if (lx < k) part[lx] += part[lx + k];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (r < rows && lx == 0) Y[r] = part[0];
}

#define MATMUL_KERNELS(name, qt)                                                                 \
    kernel void matmul_##name(global const uchar *W, const int row_bytes, const int cols,       \
                              const int rows, global const float *X, const int n,               \
                              global float *Y, local float *red) {                              \
        matmul_tile(qt, NT, W, row_bytes, cols, rows, X, n, Y, red);                            \
    }                                                                                            \
    kernel void matvec_##name(global const uchar *W, const int row_bytes, const int cols,       \
                              const int rows, global const float *X, global float *Y,           \
                              local float *red) {                                               \
        matvec_rows(qt, W, row_bytes, cols, rows, X, Y, red);                                   \
    }
FOR_EACH_WEIGHT_TYPE(MATMUL_KERNELS)
