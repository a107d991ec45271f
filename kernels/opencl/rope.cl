/* rope.cl: rotary embedding of x (n, H, hd). CS (n, n_rot/2, 2) holds cos and sin of every
 * (token, pair), computed by the host in double precision (a float32 angle pos * theta
 * loses ~1e-3 rad at position 8000; doubles are optional on devices). Dimensions from n_rot
 * on pass through. neox = 0: pairs (x[2i], x[2i+1]); neox = 1: pairs (x[i], x[i + n_rot/2]).
 * Grid: (hd rounded up to the local size, H, n); one output value per work-item. */

kernel void rope(global const float *X, global const float *CS, global float *Y,
                 const int H, const int hd, const int n_rot, const int neox) {
    const int e = get_global_id(0), h = get_global_id(1), t = get_global_id(2);
    if (e >= hd) return;
    const size_t base = ((size_t)t * H + h) * hd;
    Y[base + e] = rope_value(X + base, e, CS + (size_t)t * n_rot, n_rot, neox);
}
