/* norm.cl: the row reductions. One work-group per row; `red` holds local-size floats. */

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

/* y = exp(x - max x) / sum exp(x - max x) over rows of m; X may be Y (in place) */
kernel void softmax(global const float *X, global float *Y, const int m, local float *red) {
    const int lid = get_local_id(0), ls = get_local_size(0);
    global const float *x = X + (size_t)get_group_id(0) * m;
    global float *y = Y + (size_t)get_group_id(0) * m;
    float mx = -INFINITY;
    for (int i = lid; i < m; i += ls) mx = fmax(mx, x[i]);
    mx = wg_max(mx, red);
    float s = 0.0f;
    for (int i = lid; i < m; i += ls) {
        const float e = exp(x[i] - mx);
        y[i] = e;
        s += e;
    }
    s = wg_sum(s, red);
    for (int i = lid; i < m; i += ls) y[i] = y[i] / s;
}
