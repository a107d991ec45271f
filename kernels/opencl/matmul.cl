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
 * One token (matvec_<type>, decode): the same (LX, LY) layout for one token, with
 * `dot32_<type>`: a unit's products with x without materializing the dequantized weights
 * for every quantized type (a block's scale multiplies the sum of q * x once, and an offset m
 * multiplies the sum of x once; F32 and F16 go through the block reader). The host picks
 * LX per device: 1 on a CPU (a work-item walks a whole row, eight units at a time with
 * `dot256_<type>`; no reduction, no barrier is reached: LX is the same for the whole group),
 * MATMUL_LX elsewhere (GPUs: neighbouring work-items read neighbouring blocks). Grid: (LX,
 * rows rounded up to LY). `sums` >= 0: x is followed, from X + sums, by its unit sums (norm.cl
 * and matvec_glu write them on CPU devices), which Q4_1's offsets multiply. */

#ifndef NT
#define NT 8
#endif


/* acc plus the lane-wise products of a whole unit with x: four chained multiply-adds */
HOT float8 dot32w(const float8 acc, const float8 *w, global const float *x) {
#pragma OPENCL FP_CONTRACT ON
    return acc + w[0] * ld8f(x) + w[1] * ld8f(x + 8) + w[2] * ld8f(x + 16) + w[3] * ld8f(x + 24);
}

/* Inlined whole (HOT), with the block reader and dot32v in it, so that a unit's four float8
 * and the NT running sums live in registers: as calls PoCL kept them in memory (a 64-token
 * Q4_1 1536x576 product 4.3-5.4 -> 2.7-3.6 ms on PoCL here). Rows of whole units (every
 * block type) run a loop without tail checks, each token's sum a chain of four multiply-adds
 * (a prompt's last, short tile computes its last token again in the unused sums: cheaper
 * than the checks); with that and the block readers' loops unrolled (their w[] had stayed
 * in memory), 64-token products on the real weights took 0.42-0.65x the device time, pp64 on
 * PoCL here SmolLM2 192 -> 333 tok/s, Gemma 3 165 -> 272. */
HOT void matmul_tile(const int qt, gbytes W, const int row_bytes, const int cols, const int rows,
                     global const float *X, const int n, global float *Y, local float *red) {
    const int lx = get_local_id(0), LX = get_local_size(0);
    const int ly = get_local_id(1), LY = get_local_size(1);
    const int r = get_global_id(1);
    const int t0 = get_group_id(2) * NT;
    const int nt = min(NT, n - t0);
    local float *part = red + ly * LX * NT;  /* this row's partial sums: [t * LX + lx] */

    float8 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = (float8)(0.0f);
    if (r < rows) {
        gbytes row = W + (size_t)r * row_bytes;
        global const float *x0 = X + (size_t)t0 * cols;
        float8 w[4];
        const int units = (cols + 31) / 32;
        if ((cols & 31) == 0) {  /* whole units: no tails inside; a short tile repeats its last token */
            for (int u = lx; u < units; u += LX) {
                deq32(qt, row, u, 32, w);
                global const float *xu = x0 + 32 * u;
#pragma unroll
                for (int t = 0; t < NT; ++t) acc[t] = dot32w(acc[t], w, xu + (size_t)min(t, nt - 1) * cols);
            }
        } else {
            for (int u = lx; u < units; u += LX) {
                const int nv = min(32, cols - 32 * u);
                deq32(qt, row, u, nv, w);
#pragma unroll
                for (int t = 0; t < NT; ++t)
                    if (t < nt) acc[t] += dot32v(w, x0 + (size_t)t * cols + 32 * u, nv);
            }
        }
    }
    for (int t = 0; t < NT; ++t) part[t * LX + lx] = hsum8(acc[t]);
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = LX >> 1; s > 0; s >>= 1) {
        if (lx < s)
            for (int t = 0; t < NT; ++t) part[t * LX + lx] += part[t * LX + lx + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (r < rows)
        for (int t = lx; t < nt; t += LX) Y[(size_t)(t0 + t) * rows + r] = part[t * LX];
}

/* dot32_<type>(row, u, nv, x): unit u of a row times x[0..nv), as eight lane sums. One small
 * function per type, so compilers inline it into the row loop (PoCL did not inline one
 * function that switched over the types, though the type was a constant at each call). */

/* The products of a unit's four runs of eight are summed as a tree (two short chains instead
 * of one long one), and the quants come in 32-bit lanes (common.cl): SmolLM2's Q4_1 matvecs
 * took 0.88-0.92x the device time of the byte-lane chain on PoCL here, Gemma 3's Q5_0 and Q6_K
 * ones (which went through their block readers) about half. */
#define DOT4(a0, a1, a2, a3, x) ((a0 * ld8f(x) + a1 * ld8f(x + 8)) + (a2 * ld8f(x + 16) + a3 * ld8f(x + 24)))

/* sum(q x) over a unit of the types with one scale d (d * sum(q x) is their product) */
HOT float8 dotq_q8_0(gbytes b, global const float *x) {
#pragma OPENCL FP_CONTRACT ON
    global const char *qs = (global const char *)(b + 2);
    return DOT4(convert_float8(ld8c(qs)), convert_float8(ld8c(qs + 8)), convert_float8(ld8c(qs + 16)),
                convert_float8(ld8c(qs + 24)), x);
}

HOT float8 dotq_q4_0(gbytes b, global const float *x) {
#pragma OPENCL FP_CONTRACT ON
    int8 q[4];  /* q - 8 */
    quants_nibbles(b + 2, q);
    return DOT4(convert_float8(q[0] - 8), convert_float8(q[1] - 8), convert_float8(q[2] - 8),
                convert_float8(q[3] - 8), x);
}

HOT float8 dotq_q5_0(gbytes b, global const float *x) {
#pragma OPENCL FP_CONTRACT ON
    int8 q[4];  /* q - 16 */
    quants_q5_0(b, q);
    return DOT4(convert_float8(q[0] - 16), convert_float8(q[1] - 16), convert_float8(q[2] - 16),
                convert_float8(q[3] - 16), x);
}

/* dot32 and dot256 (below) of a type with block size BS and d (f16) at its start */
#define SCALED_DOTS(name, BS)                                                                    \
    HOT float8 dot32_##name(gbytes row, const int u, const int nv, global const float *x) {     \
        gbytes b = row + BS * u;                                                                 \
        return ld_f16(b) * dotq_##name(b, x);                                                    \
    }                                                                                            \
    HOT float8 dot256_##name(gbytes row, const int u, global const float *x,                    \
                             global const float *S, const int has) {                            \
        gbytes b = row + BS * u;                                                                 \
        float d[8];                                                                              \
        vstore8(scales8(b, BS), 0, d);                                                           \
        float8 acc = 0.0f;                                                                       \
        _Pragma("unroll") for (int k = 0; k < 8; ++k) acc += d[k] * dotq_##name(b + BS * k, x + 32 * k); \
        return acc;                                                                              \
    }
SCALED_DOTS(q8_0, 34)
SCALED_DOTS(q4_0, 18)
SCALED_DOTS(q5_0, 22)

/* d * sum(q x) + m * sum(x) over a unit */
HOT float8 dot32_affine(float d, float m, const int8 *q, global const float *x) {
#pragma OPENCL FP_CONTRACT ON
    const float8 x0 = ld8f(x), x1 = ld8f(x + 8), x2 = ld8f(x + 16), x3 = ld8f(x + 24);
    return d * ((convert_float8(q[0]) * x0 + convert_float8(q[1]) * x1) +
                (convert_float8(q[2]) * x2 + convert_float8(q[3]) * x3)) + m * ((x0 + x1) + (x2 + x3));
}

HOT float8 dot32_q4_1(gbytes row, const int u, const int nv, global const float *x) {
    gbytes b = row + 20 * u;
    int8 q[4];
    quants_nibbles(b + 4, q);
    return dot32_affine(ld_f16(b), ld_f16(b + 2), q, x);
}

HOT float8 dot32_q4_k(gbytes row, const int u, const int nv, global const float *x) {
    Q4_K_UNIT(row, u)
    int8 q[4];
    quants_q4_k(qs, 4 * (s & 1), q);
    return dot32_affine(ld_f16(b) * (float)scale, -(ld_f16(b + 2) * (float)mn), q, x);
}

HOT float8 dot32_q6_k(gbytes row, const int u, const int nv, global const float *x) {
#pragma OPENCL FP_CONTRACT ON
    Q6_K_UNIT(row, u)  /* d * (scale0 * sum over weights 0-15 + scale1 * sum over 16-31) */
    return ld_f16(b + 208) *
           ((float)scales[0] * (convert_float8(q[0] - 32) * ld8f(x) + convert_float8(q[1] - 32) * ld8f(x + 8)) +
            (float)scales[1] * (convert_float8(q[2] - 32) * ld8f(x + 16) + convert_float8(q[3] - 32) * ld8f(x + 24)));
}

/* the other types through their block reader */
#define DOT32_BY_READER(name, qt)                                                                \
    HOT float8 dot32_##name(gbytes row, const int u, const int nv, global const float *x) {  \
        float8 w[4];                                                                             \
        deq32(qt, row, u, nv, w);                                                                \
        return dot32v(w, x, nv);                                                                 \
    }
DOT32_BY_READER(f32, QT_F32)
DOT32_BY_READER(f16, QT_F16)

/* dot256_<type>(row, u, x, S, has): eight whole units u..u+7 of a row times x, as eight lane
 * sums: the row loop of a CPU work-item (LX == 1 walks a whole row). Their f16 scales are
 * converted as one float8 (scales8), not one by one. S (has != 0): the unit sums of x (each
 * unit's 32 values summed), written by the kernel that made x (the row norms of norm.cl,
 * matvec_glu), so that the Q4_1 offsets m multiply them, one unit a lane, instead of every
 * row summing x again. */
HOT float8 dot256_q4_1(gbytes row, const int u, global const float *x, global const float *S,
                       const int has) {
#pragma OPENCL FP_CONTRACT ON
    gbytes b = row + 20 * u;
    global const uint *h = (global const uint *)b;  /* d | m << 16: a block is five uints */
    const uint8 dm = (uint8)(h[0], h[5], h[10], h[15], h[20], h[25], h[30], h[35]);
    const float8 m = f16x8(convert_ushort8(dm >> 16));
    float d[8], mk[8];
    vstore8(f16x8(convert_ushort8(dm & 0xffffu)), 0, d);
    float8 acc;
    if (has) {
        acc = m * ld8f(S + u);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            int8 q[4];
            quants_nibbles(b + 20 * k + 4, q);
            acc += d[k] * DOT4(convert_float8(q[0]), convert_float8(q[1]), convert_float8(q[2]),
                               convert_float8(q[3]), x + 32 * k);
        }
    } else {
        vstore8(m, 0, mk);
        acc = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            int8 q[4];
            quants_nibbles(b + 20 * k + 4, q);
            acc += dot32_affine(d[k], mk[k], q, x + 32 * k);
        }
    }
    return acc;
}

/* the rest: eight dot32 (a loop left rolled: unrolled, oclgrind ran the Q4_K one out of bounds
 * and to wrong results, while PoCL's were right) */
#define DOT256_BY_UNITS(name)                                                                    \
    HOT float8 dot256_##name(gbytes row, const int u, global const float *x,                    \
                             global const float *S, const int has) {                            \
        float8 acc = 0.0f;                                                                       \
        for (int k = 0; k < 8; ++k) acc += dot32_##name(row, u + k, 32, x + 32 * k);             \
        return acc;                                                                              \
    }
DOT256_BY_UNITS(q4_k)
DOT256_BY_UNITS(q6_k)
DOT256_BY_UNITS(f32)
DOT256_BY_UNITS(f16)

/* the sum of the LX partial sums of one row (every work-item of the row gets it). LX == 1
 * (the same for the whole group): no work-item reaches a barrier. `red`: LX * LY floats,
 * free again on return. */
inline float row_sum(const float s, local float *red) {
    const int lx = get_local_id(0), LX = get_local_size(0);
    if (LX == 1)
        return s;
    local float *part = red + get_local_id(1) * LX;
    part[lx] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k = LX >> 1; k > 0; k >>= 1) {
        if (lx < k) part[lx] += part[lx + k];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float r = part[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

/* acc += row . x over this work-item's units of a row (LX work-items share a row); a CPU
 * work-item (LX == 1) takes eight whole units at a time. Uses the kernel's X, cols, S, has. */
#define ROW_DOT(name, acc, row)                                                                  \
    {                                                                                            \
        const uint units_ = (cols + 31) / 32, step_ = get_local_size(0);                         \
        uint u = get_local_id(0);                                                                \
        if (step_ == 1)                                                                          \
            for (; u + 8 <= (uint)cols / 32; u += 8)                                             \
                acc += dot256_##name(row, u, X + 32 * u, S, has);                                \
        for (; u < units_; u += step_)                                                           \
            acc += dot32_##name(row, u, min(32, cols - 32 * (int)u), X + 32 * u);                 \
    }

/* the unit sums of x, if the kernel that made x wrote them (sums >= 0: they start at X + sums) */
#define UNIT_SUMS                                                                                \
    global const float *S = X + max(sums, 0);                                                    \
    const int has = sums >= 0;

/* The unit sums of a one-token result y (each 32 consecutive rows summed) at S[r / 32], for the
 * matvec that reads y (the FFN's down after matvec_glu): a work-group's rows are whole units
 * when the host asks for them (out_sums >= 0: LY a multiple of 32); a unit running past `rows`
 * gets none (no matvec reads a partial unit's sum). Every work-item of the group calls this:
 * `red` holds LX * LY >= LY floats. */
inline void group_unit_sums(const float y, const int r, const int rows, global float *S, local float *red) {
    const int ly = get_local_id(1);
    barrier(CLK_LOCAL_MEM_FENCE);
    if (get_local_id(0) == 0) red[ly] = y;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (get_local_id(0) == 0 && (ly & 31) == 0 && r + 32 <= rows) S[r / 32] = SUM32(red + ly);
}

/* gelu (tanh approximation) or silu of g, times u: as elementwise.cl */
inline float act_mul(const int act, const float g, const float u, const float c) {
    return (act == 1 ? GELU(g, c, exp1) : SILU(g, exp1)) * u;
}

/* Three kinds of one-token kernels per type, grid (LX, rows rounded up to LY):
 * matvec_<type>: y = W x.
 * matvec3_<type>: up to three weights of the same type and width that read the same x
 *   (attention's q, k, v) in one launch: rows [0, r0) of the grid are W0's, the next r1
 *   W1's, the next r2 W2's (r2 = 0: two weights).
 * matvec_glu_<type>: y = act(Wg x) * (Wu x) (act 0: silu, 1: gelu): the FFN's gate, up and
 *   gated product in one launch; a work-item reads x once for both rows. */
#define MATVEC_KERNELS(name, qt)                                                                 \
    kernel void matvec_##name(global const uchar *W, const int row_bytes, const int cols,       \
                              const int rows, global const float *X, const int sums,            \
                              global float *Y, local float *red) {                              \
        UNIT_SUMS                                                                                \
        const int r = get_global_id(1);                                                          \
        float8 acc = 0.0f;                                                                       \
        if (r < rows) ROW_DOT(name, acc, W + (size_t)r * row_bytes)                              \
        const float y = row_sum(hsum8(acc), red);                                                \
        if (r < rows && get_local_id(0) == 0) Y[r] = y;                                          \
    }                                                                                            \
    kernel void matvec3_##name(global const uchar *W0, global const uchar *W1,                  \
                               global const uchar *W2, const int row_bytes, const int cols,     \
                               const int r0, const int r1, const int r2,                        \
                               global const float *X, const int sums, global float *Y0,         \
                               global float *Y1, global float *Y2, local float *red) {          \
        UNIT_SUMS                                                                                \
        const int r = get_global_id(1);                                                          \
        const int in1 = r >= r0, in2 = r >= r0 + r1;                                             \
        const int rr = in2 ? r - r0 - r1 : (in1 ? r - r0 : r);                                   \
        gbytes W = in2 ? W2 : (in1 ? W1 : W0);                                                   \
        global float *Y = in2 ? Y2 : (in1 ? Y1 : Y0);                                            \
        const int live = r < r0 + r1 + r2;                                                       \
        float8 acc = 0.0f;                                                                       \
        if (live) ROW_DOT(name, acc, W + (size_t)rr * row_bytes)                                 \
        const float y = row_sum(hsum8(acc), red);                                                \
        if (live && get_local_id(0) == 0) Y[rr] = y;                                             \
    }                                                                                            \
    kernel void matvec_glu_##name(global const uchar *Wg, global const uchar *Wu,               \
                                  const int row_bytes, const int cols, const int rows,          \
                                  global const float *X, const int sums, global float *Y,       \
                                  const int act, const float c, const int out_sums,             \
                                  local float *red) {                                           \
        UNIT_SUMS                                                                                \
        const int r = get_global_id(1);                                                          \
        float8 ag = 0.0f, au = 0.0f;                                                             \
        if (r < rows) {  /* both rows in one pass over x */                                     \
            gbytes rg = Wg + (size_t)r * row_bytes, ru = Wu + (size_t)r * row_bytes;             \
            const uint units = (cols + 31) / 32, step = get_local_size(0);                       \
            uint u = get_local_id(0);                                                            \
            if (step == 1)                                                                       \
                for (; u + 8 <= (uint)cols / 32; u += 8) {                                       \
                    ag += dot256_##name(rg, u, X + 32 * u, S, has);                              \
                    au += dot256_##name(ru, u, X + 32 * u, S, has);                              \
                }                                                                                \
            for (; u < units; u += step) {                                                       \
                const int nv = min(32, cols - 32 * (int)u);                                      \
                ag += dot32_##name(rg, u, nv, X + 32 * u);                                       \
                au += dot32_##name(ru, u, nv, X + 32 * u);                                       \
            }                                                                                    \
        }                                                                                        \
        const float g = row_sum(hsum8(ag), red), u = row_sum(hsum8(au), red);                    \
        const float y = act_mul(act, g, u, c);                                                   \
        if (r < rows && get_local_id(0) == 0) Y[r] = y;                                          \
        if (out_sums >= 0) group_unit_sums(y, r, rows, Y + out_sums, red);                        \
    }

#define MATMUL_KERNEL(name, qt)                                                                  \
    kernel void matmul_##name(global const uchar *W, const int row_bytes, const int cols,       \
                              const int rows, global const float *X, const int n,               \
                              global float *Y, local float *red) {                              \
        matmul_tile(qt, W, row_bytes, cols, rows, X, n, Y, red);                                \
    }
FOR_EACH_WEIGHT_TYPE(MATMUL_KERNEL)
FOR_EACH_WEIGHT_TYPE(MATVEC_KERNELS)
