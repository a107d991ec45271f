"""The numpy backend: the living definition of every op in the contract (kernels.base).

Quantized weights are dequantized per call from the mapped blocks (so the profile sees
every byte read), unless the explicit `weight_cache="f32"` mode is chosen: then each
matmul weight is dequantized once, in `prepare`, and kept as float32 (4-8x the memory of
the file; its cost shows in the load report), in memory or in a file mapped on later loads
(`store`, see workbench.f32_store).
"""

from __future__ import annotations

import warnings

import numpy as np

from .base import OPS, ROPE_NEOX, ROPE_NORM, Backend
from .qtypes import can_dequantize, dequantize

WEIGHT_CACHES = ("none", "f32")
CHUNK_WEIGHTS = 1 << 17  # weights dequantized at once by an uncached matmul (512 KiB of float32)


def _cache_order(w) -> str:
    """Memory order of a cached float32 weight (rows, cols). "F" (column-major) makes
    `x @ w.T` a plain NN product of contiguous arrays for BLAS; it pays for weights with at
    least as many rows as columns (q, k/v of wide heads, gate, up, the output matrix) and not
    for the wide ones (down). Measured on this project's 2-core machine (OpenBLAS 0.3.31,
    2 threads): 1536x576 matvec 21 -> 25 GB/s, 576x1536 23 -> 17 GB/s if made "F", 64-token
    GEMMs 137 -> 175 GFLOP/s; whole decode +24-34 % (SmolLM2, Gemma 3)."""
    return "F" if w.data.shape[0] >= w.cols else "C"


# Weights of a layer that read the same input (GGUF names without "blk.N." and ".weight"):
# the f32 cache keeps each group in one array and runs it as one GEMM. Measured on this
# project's 2-core machine: SmolLM2's q/k/v as one 960-row matvec instead of 576+192+192
# (and gate/up as one of 3072 rows): a decode step 34.5 -> 27.8 ms (medians of 15).
SHARED_INPUT = (("attn_q", "attn_k", "attn_v"), ("ffn_gate", "ffn_up"))


def _shared_input_groups(weights) -> list[list]:
    """The `SHARED_INPUT` groups present in `weights` (all members 2-D, quantized or F32, of
    the same width), in order."""
    by_name = {getattr(w, "name", None): w for w in weights}
    groups = []
    for w in weights:
        name = getattr(w, "name", "") or ""
        parts = name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[3] != "weight":
            continue
        for names in SHARED_INPUT:
            if parts[2] != names[0]:
                continue
            members = [by_name.get(f"blk.{parts[1]}.{n}.weight") for n in names]
            if all(m is not None and m.data.ndim == 2 and m.cols == w.cols for m in members):
                groups.append(members)
    return groups


def _cache_blocks(weights) -> list[tuple[str, tuple[int, int], str, list]]:
    """The f32 cache's arrays, in the weights' order: (name, (rows, cols), memory order,
    [(weight, first row, end row)]): one per `SHARED_INPUT` group (column-major), one per
    other quantized matrix (`_cache_order`). Float32 weights and vectors are not copied."""
    groups = {id(g[0]): g for g in _shared_input_groups(weights)}
    grouped = {id(w) for g in groups.values() for w in g}
    blocks = []
    for i, w in enumerate(weights):
        name = getattr(w, "name", None) or f"#{i}"
        if id(w) in groups:
            g = groups[id(w)]
            ends = np.cumsum([0] + [m.rows for m in g])
            blocks.append(("+".join(getattr(m, "name", "") for m in g), (int(ends[-1]), w.cols), "F",
                           [(m, int(a), int(b)) for m, a, b in zip(g, ends[:-1], ends[1:])]))
        elif id(w) not in grouped and w.qtype.name != "F32" and w.data.ndim == 2:
            blocks.append((name, (w.data.shape[0], w.cols), _cache_order(w), [(w, 0, w.data.shape[0])]))
    return blocks


def _dequantize_into(out: np.ndarray, w) -> np.ndarray:
    """Dequantize weight `w` into `out` (rows, cols), a band of rows at a time."""
    step = max(1, CHUNK_WEIGHTS // w.cols)
    for r in range(0, w.data.shape[0], step):
        dequantize(w.data[r : r + step], w.qtype, out=out[r : r + step])  # (F32: a copy of the band)
    return out


def weight_f32(w) -> np.ndarray:
    """float32 (rows, cols) for a weight: a zero-copy view for F32, else a dequantized copy."""
    if w.qtype.name == "F32":
        return w.data.view(np.float32)
    return dequantize(w.data, w.qtype)


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self, weight_cache: str = "none", fuse: bool | None = None, store=None):
        """store (with the f32 cache): where the cache is kept between loads (a
        workbench.f32_store.F32Store; `workbench.load` gives one), or None: in memory.
        fuse (with the f32 cache): whether weights that read one input run as one GEMM.
        None: yes, except while a recorder runs (then every matmul's time is its own);
        True: always (under a recorder a group's time is its first matmul's, the others
        take ~1 us); False: never."""
        if weight_cache not in WEIGHT_CACHES:
            raise ValueError(f"weight_cache must be one of {WEIGHT_CACHES}, not {weight_cache!r}")
        self.weight_cache = weight_cache
        self.fuse = fuse
        self.store = store
        self._cache: dict[int, np.ndarray] = {}
        self._groups: dict[int, tuple] = {}  # id(first weight) -> (block, [(id(w), first row, end row)])
        self._held: dict[int, tuple] = {}  # id(w) -> (input, product): siblings computed by one GEMM
        self.profile = False  # set while a recorder runs: every matmul then computes its own product
        self._last_rotation: tuple = (None, None)
        self._last_mask: tuple = (None, None)

    def supports(self, op, qtype=None):
        return op in OPS and (qtype is None or can_dequantize(qtype))

    def prepare(self, weights) -> None:
        """With the f32 cache: every quantized weight dequantized once, a band of rows at a
        time into its place (a band's temporaries stay in the CPU cache and are reused:
        1.5-2x faster than whole-tensor temporaries here; two threads were 2-3x slower).
        Each is stored in the memory order its matmul runs fastest in (`_cache_order`); the
        weights of a layer that read the same input (`SHARED_INPUT`) side by side in one
        array, each a view of its rows, so that one GEMM can compute them all (`matmul`).
        With a `store` (workbench.f32_store) the arrays live in a file: mapped if it exists,
        else written there once (if that fails: built in memory, with a warning)."""
        if self.weight_cache != "f32":
            return
        weights = list({id(w): w for w in weights if id(w) not in self._cache}.values())
        blocks = _cache_blocks(weights)
        layout = [(name, shape, order) for name, shape, order, _ in blocks]

        def fill(arrays):
            for name, _, _, members in blocks:
                for w, r0, r1 in members:
                    _dequantize_into(arrays[name][r0:r1], w)

        arrays = self.store.load(layout) if self.store is not None else None
        if arrays is None and self.store is not None:
            try:
                arrays = self.store.save(layout, fill)
            except OSError as e:
                warnings.warn(f"the float32 weight cache could not be saved ({e}); keeping it in memory",
                              RuntimeWarning, stacklevel=3)
        if arrays is None:
            arrays = {name: np.empty(shape, np.float32, order=order) for name, shape, order in layout}
            fill(arrays)
        for name, _, _, members in blocks:
            a = arrays[name]
            for w, r0, r1 in members:
                self._cache[id(w)] = a[r0:r1]
            if len(members) > 1:
                self._groups[id(members[0][0])] = (a, [(id(w), r0, r1) for w, r0, r1 in members])
        for w in weights:  # float32 weights and vectors: views of the mapped file
            if id(w) not in self._cache:
                self._cache[id(w)] = np.ascontiguousarray(weight_f32(w))

    @property
    def can_fuse(self) -> bool:
        """Whether this backend has ops to fuse (groups of weights cached side by side)."""
        return bool(self._groups)

    def cache_info(self) -> dict:
        """The f32 cache: its bytes and where it lives ("memory", or the store file it was
        mapped from or written to during this load)."""
        info = {"mode": self.weight_cache, "bytes": self.cache_bytes}
        if self.weight_cache == "f32":
            stored = self.store.info() if self.store is not None else {}
            info["store"] = stored if stored.get("path") else "memory"
        return info

    @property
    def cache_bytes(self) -> int:
        return sum(a.nbytes for a in self._cache.values())

    # ---- ops ------------------------------------------------------------------------

    def embed(self, w, ids):
        cached = self._cache.get(id(w))
        if cached is not None:
            return cached[ids]
        return dequantize(w.data[ids], w.qtype)

    def matmul(self, x, w):
        cached = self._cache.get(id(w))
        if cached is not None:
            if self._held:
                held = self._held.pop(id(w), None)
                if held is not None and held[0] is x:
                    return held[1]
            group = self._groups.get(id(w))
            if group is not None and (not self.profile if self.fuse is None else self.fuse):
                # the first weight of a group: one GEMM for the whole group; its siblings'
                # products wait for their matmul with this very input array
                block, parts = group
                y = x @ block.T
                self._held = {wid: (x, y[:, a:b]) for wid, a, b in parts[1:]}
                return y[:, parts[0][1] : parts[0][2]]
            return x @ cached.T
        if w.qtype.name == "F32":
            return x @ weight_f32(w).T
        # dequantize a band of rows at a time: the float32 band stays in cache and no
        # fresh pages are faulted in for a whole-tensor temporary
        out = np.empty((x.shape[0], w.rows), np.float32)
        step = max(16, CHUNK_WEIGHTS // w.cols)
        for r in range(0, w.rows, step):
            out[:, r : r + step] = x @ dequantize(w.data[r : r + step], w.qtype).T
        return out

    def rms_norm(self, x, weight, eps):
        ms = np.add.reduce(x * x, axis=-1, keepdims=True) / np.float32(x.shape[-1])
        return (x * (1.0 / np.sqrt(ms + eps))) * weight

    def rope(self, x, pos, theta_base, mode, n_rot=None):
        """Rotate pairs of each head by pos * theta_base^(-2i/n_rot): as complex numbers,
        (x0 + i x1) * e^(i angle). NORM pairs neighbours (x[2i], x[2i+1]); NEOX pairs the
        two halves (x[i], x[i + n_rot/2])."""
        n, H, hd = x.shape
        n_rot = hd if n_rot is None else n_rot
        half = n_rot // 2
        rot = self._rotation(np.asarray(pos), theta_base, n_rot)  # (n, 1, half)
        if mode == ROPE_NORM and n_rot == hd:
            return (np.ascontiguousarray(x).view(np.complex64) * rot).view(np.float32)
        out = x.copy()
        if mode == ROPE_NORM:
            z = np.ascontiguousarray(x[..., :n_rot]).view(np.complex64) * rot  # (n, H, half)
            out[..., :n_rot] = z.view(np.float32)
        elif mode == ROPE_NEOX:
            z = np.empty((n, H, half), np.complex64)
            z.real, z.imag = x[..., :half], x[..., half:n_rot]
            z *= rot
            out[..., :half], out[..., half:n_rot] = z.real, z.imag
        else:
            raise ValueError(f"unknown rope mode {mode!r}")
        return out

    def _rotation(self, pos: np.ndarray, theta_base: float, n_rot: int) -> np.ndarray:
        """e^(i pos theta_j) as complex64 (n, 1, n_rot/2); the last one is reused, since every
        layer's q and k rotate the same positions by the same bases."""
        key = (pos.tobytes(), float(theta_base), n_rot)
        if self._last_rotation[0] != key:
            inv = theta_base ** (-np.arange(n_rot // 2, dtype=np.float64) * 2.0 / n_rot)
            rot = np.exp(1j * (pos.astype(np.float64)[:, None] * inv)).astype(np.complex64)[:, None, :]
            self._last_rotation = (key, rot)
        return self._last_rotation[1]

    def attention(self, q, k, v, cache, layer, pos, scale, window=None):
        n, H, hd = q.shape
        K, V = cache.k[layer], cache.v[layer]
        K[pos : pos + n] = k
        V[pos : pos + n] = v
        T, Hkv = pos + n, K.shape[1]
        g = H // Hkv  # query heads per KV head
        # per KV head, one product for all its query heads and tokens: rows are (token, head)
        qh = q.reshape(n, Hkv, g, hd).transpose(1, 0, 2, 3).reshape(Hkv, n * g, hd)
        s = qh @ K[:T].transpose(1, 2, 0)  # (Hkv, n*g, T)
        s *= np.float32(scale)
        if n > 1 or (window is not None and T > window):  # one new token sees every cached one
            s.reshape(Hkv, n, g, T)[...] += self._mask(pos, n, T, window)[:, None, :]  # (a view: in place)
        p = self.softmax(s, out=s)  # the scores are a temporary of their own: in place
        o = p @ V[:T].transpose(1, 0, 2)  # (Hkv, n*g, hd)
        return np.ascontiguousarray(o.reshape(Hkv, n, g, hd).transpose(1, 0, 2, 3)).reshape(n, H * hd)

    def softmax(self, x, out=None):
        """softmax over the last axis; `out` (may be x) receives it."""
        out = np.subtract(x, x.max(axis=-1, keepdims=True), out=out)
        np.exp(out, out=out)
        out /= out.sum(axis=-1, keepdims=True)
        return out

    def _mask(self, pos: int, n: int, T: int, window: int | None) -> np.ndarray:
        """_causal_mask, the last one reused: every layer of a forward masks alike."""
        key = (pos, n, T, window)
        if self._last_mask[0] != key:
            self._last_mask = (key, _causal_mask(pos, n, T, window))
        return self._last_mask[1]

    def silu_mul(self, g, u):  # g / (1 + e^-g) * u, in one temporary
        t = np.negative(g)
        np.exp(t, out=t)
        t += np.float32(1)
        np.divide(g, t, out=t)
        t *= u
        return t

    def gelu_mul(self, g, u):
        c = np.float32(np.sqrt(2.0 / np.pi))
        return 0.5 * g * (1.0 + np.tanh(c * (g + np.float32(0.044715) * g * g * g))) * u

    def add(self, a, b):
        return a + b

    def scale(self, x, s):
        return x * np.float32(s)


def _causal_mask(pos: int, n: int, T: int, window: int | None) -> np.ndarray:
    """(n, T) additive mask: 0 where query pos+i may see key j, -inf elsewhere."""
    qp = pos + np.arange(n)[:, None]
    kp = np.arange(T)[None, :]
    ok = kp <= qp
    if window is not None:
        ok &= qp - kp < window
    return np.where(ok, np.float32(0), np.float32(-np.inf))
