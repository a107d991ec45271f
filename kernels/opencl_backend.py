"""The OpenCL backend: every op of the contract as OpenCL C kernels (kernels/opencl/*.cl).

Written for GPUs, tested on PoCL (a CPU device from `pip install pyopencl
pocl-binary-distribution`) and under oclgrind. Portable OpenCL C 1.2: no extensions, work-group
sizes from the device and kernel (powers of two where a kernel reduces).

- Weights: matmul and embed read the raw GGUF blocks (F32, F16, Q4_0, Q4_1, Q5_0, Q8_0,
  Q4_K, Q6_K) through the shared block readers of `common.cl`; no dequantized model exists
  on the device. A weight is made a buffer the first time an op needs it, once, in this
  backend's own cache keyed by the tensor. Where the device shares host memory (PoCL on a
  CPU: `host_unified_memory`) the buffer is the mapped file itself (CL_MEM_USE_HOST_PTR),
  so kernels read the mapped pages and the page-fault/touch signal stays real; elsewhere the
  blocks are copied to the device once. Other types: `supports()` is False and ops.py falls
  back to numpy.
- Activations: `resident=False`: every op takes host arrays and returns host arrays (copy
  in, run, copy out, wait). Host inputs are used in place where memory is shared, else
  copied. `resident=True` keeps a forward on the device: ops return `CLArray`s, take them
  as inputs, and nothing waits until `to_host` (Model.forward calls it on the logits). That
  hides the per-op launch/copy/wait latency (~50-200 us an op on PoCL, ~400 ops a token).
  ops.py hands any op that runs elsewhere (a numpy fallback) host copies. The default,
  `resident="auto"`, is host arrays for direct calls and resident from `prepare()` on, i.e.
  once a model runs its forwards through ops.py: generation's fast path.
- One token (decode) has its own kernels: `matvec_<type>` (on a CPU device a work-item
  walks a whole row, eight units at a time; dot products without materializing the
  dequantized weights where the type allows, see matmul.cl) and `attn_decode` (kv store,
  scores, softmax and values in one launch instead of four; its device time is the
  attention op's; on a CPU device `attn_decode_row`, a work-item per head, for heads of up
  to HD_MAX values).
- Unit sums (CPU devices, one token): the row norm and the fused gated product also write
  the sums of their result's 32-value units after it (`CLArray.sums`: where they start), and
  the matvecs reading that result take Q4_1's offset terms from them instead of summing x
  again in every row (a SmolLM2 layer's matvecs 0.83x the device time).
- CPU devices get their own shapes where a work-group's work-items would only be a loop:
  a work-item walks a whole matvec row (above), and each row of softmax and RMSNorm (rows up
  to `ROW_MAX`) is one work-item's, eight values at a time, with no barriers (norm.cl).
- Fusion (resident ops only, `fuse`): an op may hand back a `CLArray` whose kernel is held
  back (a `_Lazy`), so that the op reading it launches one fused kernel instead:
  matmuls of one token held back until read, then every held-back matmul of the same input
  runs in one `matvec3_<type>` launch (attention's q, k, v); `silu_mul`/`gelu_mul` of two
  held-back matmuls of one input is one `matvec_glu_<type>` (gate, up, product); an `add`
  read by `rms_norm` is one `add_rms_norm` (the sum is stored too: it is the residual);
  the ropes of q and k read by a one-token attention are done inside `attn_decode`.
  Anything else that reads a held-back result (`to_host`, another op) launches its kernel
  then, so results never change. With the default `fuse=None` nothing is held back while
  `profile` is on (a recorder attached): every op's kernels and device time are its own.
  With `fuse=True` under a recorder, a fused kernel's device time is the reading op's (the
  held-back ops show none). SmolLM2 decode: 455 -> 216 launches a token.
- Decode steps replayed (`StepGraph`, resident and fused, no recorder): Model.forward
  records the first one-token step of a run state and replays its launches for later tokens
  without the Python forward (`can_capture`, `begin_capture`, `end_capture`): the token id
  and the rotations are refilled, the attention launch rebuilt for the position.
- Launch cost: a launch sets only the arguments that differ from the kernel's last launch
  (`_Args`: scalars packed from the kernels' argument info) and enqueues; pyopencl's kernel
  call, which sets every argument, cost more (PoCL: ~9-13 -> ~4 us a launch).
- Timing: the queue has PROFILING_ENABLE; every kernel and copy is noted, and once a
  blocking read has returned (all earlier commands are complete: the queue is in order)
  their times are appended to `self.kernel_events` as plain dicts
  {kernel, queued_ns, submit_ns, start_ns, end_ns} (device clock). `drain_kernel_events()`
  returns and clears them. Only while `profile` is true (the recorder turns it on while it
  records, so a long run without a recorder keeps no timings); then a resident op also
  waits for its own commands, so the recorder gets each op's device time with its op.
- Programs: all `<name>.cl` files are compiled as one program with `common.cl` prepended
  (once), once per context; the context and program are shared by every backend on the same
  device. The driver caches the build (pyopencl leaves it to PoCL and to NVIDIA's driver).
- Device: `device=` an index into `list_devices()` or a substring of "platform: device"
  (case-insensitive), else env `WORKBENCH_OPENCL_DEVICE`, else the first GPU, else the first
  device. No platform, no match, or a failed build raise `BackendError` saying what exists.
"""

from __future__ import annotations

import functools
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import OPS, ROPE_NEOX, ROPE_NORM, Backend, BackendError, KVCache

KERNEL_DIR = Path(__file__).with_name("opencl")
COMMON = "common"
PROGRAMS = ("matmul", "embed", "norm", "rope", "elementwise", "attention")
# weight types read by the block readers, and their kernel-name suffix
WEIGHT_TYPES = {"F32": "f32", "F16": "f16", "Q4_0": "q4_0", "Q4_1": "q4_1", "Q5_0": "q5_0",
                "Q8_0": "q8_0", "Q4_K": "q4_k", "Q6_K": "q6_k"}
ENV_DEVICE = "WORKBENCH_OPENCL_DEVICE"
TOKEN_TILE = 8  # tokens per matmul work-group (NT in matmul.cl)
MAX_LOCAL = 256  # largest work-group the host asks for
MATMUL_LX = 8  # matmul work-items per row, at most, on devices other than CPUs
MATMUL_GROUP = 64  # matmul work-items per group, at most (rows fill the rest)
# one-token matmul on a CPU device: rows per group, a work-item each. 64: fewer groups for PoCL to
# schedule; Gemma 3's 262144-row output matvec 8.3 -> 7.0 ms and its decode p10 22.8-26.4 ->
# 21.3-21.9 ms a token; SmolLM2's matvecs 0.95-0.98x (A/B on the real weights), its decode equal
MATVEC_GROUP_CPU = 64
HD_MAX = 256  # the largest head attn_decode_row takes (its private arrays; attention.cl)
MATMUL_GROUP_CPU = 16  # prompt matmul on a CPU device: rows per group, a work-item each
ROW_MAX = 4096  # longest row a CPU work-item takes whole in softmax and RMSNorm (its sums run in 8
#                lanes: longer rows, a vocabulary's, keep the work-group's tree reduction for accuracy)
SCORES_FLOATS = 1 << 24  # attention scores buffer limit (64 MiB); longer batches run in chunks
F32 = np.float32


def _cl():
    try:
        import pyopencl as cl
        import pyopencl.tools  # noqa: F401  (memory pool)
    except ImportError as e:
        raise BackendError("the opencl backend needs pyopencl (and a device, e.g. "
                           "`pip install pyopencl pocl-binary-distribution`): " + str(e)) from e
    return cl


# ---- device selection ---------------------------------------------------------------------

def _all_devices(cl) -> list:
    """[(platform, device)] over every platform, in platform order."""
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # PLATFORM_NOT_FOUND_KHR: no ICD installed
        return []
    found = []
    for p in platforms:
        try:
            found += [(p, d) for d in p.get_devices()]
        except cl.Error:  # a platform with no devices
            pass
    return found


def _describe(p, d) -> str:
    return f"{p.name.strip()}: {d.name.strip()}"


def list_devices() -> list[str]:
    """'platform: device' of every OpenCL device, in the order `device=<index>` uses."""
    return [_describe(p, d) for p, d in _all_devices(_cl())]


def select_device(spec: int | str | None = None):
    """The pyopencl Device for `spec` (index, or name substring), else $WORKBENCH_OPENCL_DEVICE,
    else the first GPU, else the first device."""
    cl = _cl()
    if spec is None or spec == "":
        spec = os.environ.get(ENV_DEVICE) or None
    found = _all_devices(cl)
    if not found:
        raise BackendError("no OpenCL platform with a device found (no ICD registered?). "
                           "For a CPU device: pip install pocl-binary-distribution")
    names = [f"{i}: {_describe(p, d)}" for i, (p, d) in enumerate(found)]
    if spec is None:
        gpus = [d for _, d in found if d.type & cl.device_type.GPU]
        return gpus[0] if gpus else found[0][1]
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        i = int(spec)
        if 0 <= i < len(found):
            return found[i][1]
        raise BackendError(f"no OpenCL device with index {i}; found: {'; '.join(names)}")
    hits = [d for p, d in found if str(spec).lower() in _describe(p, d).lower()]
    if not hits:
        raise BackendError(f"no OpenCL device matches {spec!r}; found: {'; '.join(names)}")
    return hits[0]


# ---- programs, built once per context ----------------------------------------------------

_CONTEXTS: dict[int, tuple] = {}  # device int_ptr -> (context, {program name: Program})
ALL = "all"  # the one program holding every file's kernels


def _source(name: str) -> str:
    """common.cl + <name>.cl as one source; #line keeps compiler messages' file and line right.
    common.cl is guarded, so that several of these sources make one program."""
    common = (KERNEL_DIR / f"{COMMON}.cl").read_text()
    own = (KERNEL_DIR / f"{name}.cl").read_text()
    return (f'#ifndef WORKBENCH_COMMON_CL\n#define WORKBENCH_COMMON_CL\n#line 1 "{COMMON}.cl"\n{common}\n#endif\n'
            f'#line 1 "{name}.cl"\n{own}')


def _context_and_programs(cl, device) -> tuple:
    """The device's context and its kernels, built once: every file in one program (PoCL
    spends ~40 ms a program even when it has the build cached: one program of all six files
    takes ~35 ms instead of ~250 ms; pyopencl leaves caching to PoCL). If that build fails,
    the files are built one by one so that the error names the file, as it always did."""
    key = device.int_ptr
    hit = _CONTEXTS.get(key)
    if hit is not None:
        return hit
    try:
        ctx = cl.Context([device])
    except cl.Error as e:
        raise BackendError(f"cannot create an OpenCL context on {device.name.strip()}: {e}") from e
    options = [f"-DNT={TOKEN_TILE}", f"-DHD_MAX={HD_MAX}", "-cl-std=CL1.2", "-cl-kernel-arg-info"]
    try:
        programs = {ALL: cl.Program(ctx, "\n".join(_source(name) for name in PROGRAMS)).build(options=options)}
    except cl.Error as combined:
        for name in PROGRAMS:
            try:
                cl.Program(ctx, _source(name)).build(options=options)
            except cl.Error as e:
                raise BackendError(f"OpenCL build of kernels/opencl/{name}.cl failed on "
                                   f"{device.name.strip()} ({device.platform.name.strip()}):\n{e}") from e
        raise BackendError(f"OpenCL build of kernels/opencl/{{{','.join(PROGRAMS)}}}.cl as one program failed on "
                           f"{device.name.strip()} ({device.platform.name.strip()}):\n{combined}") from combined
    _CONTEXTS[key] = (ctx, programs)
    return ctx, programs


# ---- device arrays -----------------------------------------------------------------------

class CLArray:
    """A C-contiguous float32 array in a device buffer: what ops return with `resident=True`,
    so a forward's activations stay on the device. Enough of numpy's surface for the
    forwards (shape, size, reshape, x[a:b] on the first axis); `np.asarray(x)` and
    `backend.to_host(x)` copy it to the host (waiting for the queue)."""

    __slots__ = ("buf", "shape", "backend", "lazy", "sums")
    dtype = np.dtype(np.float32)

    def __init__(self, buf, shape, backend, lazy=None, sums=-1):
        self.buf, self.shape, self.backend = buf, tuple(int(s) for s in shape), backend
        self.lazy = lazy  # a _Lazy while the kernel that writes buf is not launched yet
        self.sums = sums  # >= 0: buf holds the unit sums of a one-row x from this float on

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return 4 * self.size

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"CLArray(shape={self.shape}, on {self.backend!r})"

    def reshape(self, *shape) -> "CLArray":
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            shape = tuple(self.size // known if s == -1 else s for s in shape)
        if math.prod(shape) != self.size:
            raise ValueError(f"cannot reshape CLArray of shape {self.shape} into {shape}")
        return CLArray(self.buf, shape, self.backend, self.lazy, self.sums)

    def __getitem__(self, key) -> "CLArray":
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a CLArray takes only x[a:b] on its first axis; use np.asarray(x) for more")
        a, b, _ = key.indices(self.shape[0])
        return self.backend._rows(self, a, max(a, b))

    def __array__(self, dtype=None, copy=None):
        host = self.backend.to_host(self)
        return host if dtype is None else host.astype(dtype)


class _Lazy:
    """The launch that will write a CLArray's buffer, held back so that the op reading it can
    launch one fused kernel instead (see OpenCLBackend, "Fusion"). Every view of the array
    shares it; `kind` becomes None once launched."""

    __slots__ = ("kind", "args")

    def __init__(self, kind: str, args: tuple):
        self.kind, self.args = kind, args


class StepGraph:
    """One decode step of a model on this backend, recorded while a forward ran it (its
    launches and copies in order, with their arguments and buffers), replayed for the later
    tokens of the same run state without running the Python forward again: on PoCL here the
    forward's Python took ~3.9 ms of a SmolLM2 token's ~12.5 on the same two cores as the
    kernels. What a step changes is refilled first: the token id and the rotations of the
    position (`inputs`), and the attention launch is rebuilt for the position; every other
    launch is the recorded one, on the recorded buffers, so a replayed step computes what
    the forward would (the same kernels on the same data). Model.forward records the first
    decode step of a run state and replays it while nothing routes an op elsewhere and no
    recorder is attached. Decode steps, forward vs replay alternating in one process (8 runs
    of 16 tokens, median of the run medians): SmolLM2 13.2 -> 11.3 ms, Gemma 3 23.0 -> 20.4.
    Tried: a kernel object of its own for every recorded launch, its arguments set once, so
    that a replay only enqueues: ~0.6 ms a token (12.7 against 13.4 ms, alternating in one
    process) for ~47 ms once to make them (~0.25 ms each on PoCL), paid back only after ~80
    tokens: launches keep the shared kernel objects (`_Args`)."""

    def __init__(self, backend, actions: list, inputs: list, out, shape: tuple, kv):
        self.backend, self.actions, self.inputs = backend, actions, inputs
        self.out, self.shape, self.kv = out, shape, kv

    def replay(self, token: int, pos: int) -> np.ndarray:
        """The logits of `token` at `pos` (the KV cache gets its key and value there)."""
        be = self.backend
        for host, buf, fill in self.inputs:
            fill(host, token, pos)
            if not be.inputs_in_place:
                be._pending.append(("copy_h2d", be.cl.enqueue_copy(be.queue, buf, host, is_blocking=False)))
        for action in self.actions:
            action(be, pos)
        return be._out(self.out, self.shape)


@dataclass
class CLKVCache(KVCache):
    """KVCache whose k[layer], v[layer] are device buffers of (n_ctx, n_head_kv, head_dim) f32."""

    n_head_kv: int = 0
    head_dim: int = 0


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


def _pow2_ceil(n: int) -> int:
    return 1 << (max(1, int(n)) - 1).bit_length()


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _cos_sin(pos: np.ndarray, theta_base: float, n_rot: int) -> np.ndarray:
    """cos and sin (n, n_rot/2, 2) of every position and pair, rounded as the numpy reference."""
    half = n_rot // 2
    inv = theta_base ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot)
    ang = np.asarray(pos, np.float64).reshape(-1)[:, None] * inv[None, :]
    return np.stack([np.cos(ang).astype(F32), np.sin(ang).astype(F32)], axis=-1)


# ---- the actions of a recorded decode step (StepGraph): each is called as f(backend, pos) ----

def _replay_launch(kernel, gsize, lsize, args, be, pos) -> None:
    be._launch(kernel, gsize, lsize, *args)


def _replay_copy(dst, src, nbytes, src_offset, be, pos) -> None:
    ev = be.cl.enqueue_copy(be.queue, dst, src, byte_count=nbytes, src_offset=src_offset)
    be._pending.append(("copy_d2d", ev))


def _replay_attention(fixed, rest, H, hd, be, pos) -> None:
    """The one-token attention launch at position `pos` (its only argument that moves)."""
    args = fixed + (np.int32(pos),) + rest
    if be.is_cpu and hd <= HD_MAX:  # a work-item per head, no barriers (attention.cl)
        be._launch("attn_decode_row", (H,), (1,), *args)
    else:
        ls = be._local("attn_decode", min(max(pos + 1, hd), 64))
        be._launch("attn_decode", (ls, H), (ls, 1), *args, be.cl.LocalMemory(4 * ls), be.cl.LocalMemory(8 * hd))


def _fill_token(host: np.ndarray, token: int, pos: int) -> None:
    host[0] = token


def _fill_rotation(theta_base: float, n_rot: int, host: np.ndarray, token: int, pos: int) -> None:
    host[...] = _cos_sin(np.array([pos]), theta_base, n_rot)


_SCALARS = {"int": "<i", "uint": "<I", "float": "<f", "long": "<q", "ulong": "<Q"}  # struct formats


def _scalar_formats(cl, kernel) -> list | None:
    """A struct format per scalar argument of the kernel (None for a buffer or local memory),
    from the kernel's argument info; None where the driver gives no argument info."""
    try:
        formats = []
        for i in range(kernel.num_args):
            if kernel.get_arg_info(i, cl.kernel_arg_info.ADDRESS_QUALIFIER) != \
                    cl.kernel_arg_address_qualifier.PRIVATE:
                formats.append(None)  # a buffer or local memory
            else:
                formats.append(_SCALARS[kernel.get_arg_info(i, cl.kernel_arg_info.TYPE_NAME).strip()])
        return formats
    except (cl.Error, KeyError):
        return None


class _Args:
    """Sets a kernel's arguments, skipping those that are what the last launch set: a scalar
    with the same bytes, the same buffer object, local memory of the same size. Decode
    launches repeat most of theirs (shapes, weights, local memory). pyopencl's kernel call,
    which sets every argument, took ~9-13 us a launch on PoCL; here ten arguments take
    ~2.5 us and the enqueue ~1-2 (setting a buffer ~0.1 us, a packed scalar ~0.15, local
    memory ~2.4). SmolLM2 decode on a 2-core CPU: the host thread's CPU time 10.4 -> 9.8 ms a
    token, time the kernels' threads get back (the wall time did not move beyond the noise:
    the kernels bound it there). Keeps a reference to every argument it set, so an argument
    it skips is never an object freed and replaced since. Without argument info (`formats`
    None: some drivers) every argument is set every launch, scalars as the numpy scalars the
    backend passes."""

    __slots__ = ("kernel", "formats", "last", "_raw", "_local")

    def __init__(self, cl, kernel, formats):
        self.kernel, self.formats, self._local = kernel, formats, cl.LocalMemory
        self.last = [None] * kernel.num_args
        self._raw = getattr(kernel, "_set_arg_buf", None)  # bytes as they are; pyopencl's own invoker uses it

    def set(self, args) -> None:
        k, last = self.kernel, self.last
        if self.formats is None:
            for i, a in enumerate(args):
                k.set_arg(i, a)
            return
        for i, (a, fmt) in enumerate(zip(args, self.formats)):
            if fmt is not None:
                b = struct.pack(fmt, a)
                if b != last[i]:
                    if self._raw is not None:
                        self._raw(i, b)
                    else:
                        k.set_arg(i, np.frombuffer(b, fmt)[0])
                    last[i] = b
            elif a is not last[i]:
                local = self._local
                if not (isinstance(a, local) and isinstance(last[i], local) and a.size == last[i].size):
                    k.set_arg(i, a)
                last[i] = a


class _Kernels(dict):
    """Kernel name -> pyopencl Kernel, each made the first time it is looked up (its argument
    types read and its largest work-group asked then): a model runs a dozen of the ~50
    kernels, and making one costs ~0.6 ms on PoCL. Iterating, `len` and `in` see every
    kernel's name; a name no program has is a KeyError, as in a plain dict.
    `local_max`: kernel name -> the largest power-of-two work-group it may have on the device
    (within MAX_LOCAL), filled as kernels are made. `args`: kernel name -> its `_Args`."""

    def __init__(self, cl, programs: dict, device):
        super().__init__()
        self._cl, self._device = cl, device
        self._dev_max = min(device.max_work_group_size, MAX_LOCAL)
        self._where = {name: prog for prog in programs.values()
                       for name in prog.get_info(cl.program_info.KERNEL_NAMES).split(";") if name}
        self.local_max = _LocalMax(self)
        self.args: dict[str, _Args] = {}

    def __missing__(self, name: str):
        prog = self._where.get(name)
        if prog is None:
            raise KeyError(name)
        cl = self._cl
        k = cl.Kernel(prog, name)
        self.args[name] = _Args(cl, k, _scalar_formats(cl, k))
        wg = k.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE, self._device)
        self.local_max[name] = _pow2_floor(min(self._dev_max, wg))
        self[name] = k
        return k

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name) -> bool:
        return name in self._where

    def keys(self):
        return self._where.keys()


class _LocalMax(dict):
    def __init__(self, kernels: _Kernels):
        super().__init__()
        self._kernels = kernels

    def __missing__(self, name: str) -> int:
        self._kernels[name]  # makes the kernel, which fills this entry
        return dict.__getitem__(self, name)


class OpenCLBackend(Backend):
    name = "opencl"

    def __init__(self, device: int | str | None = None, weights: str = "auto", profile: bool = False,
                 resident: bool | str = "auto", fuse: bool | None = None):
        """weights: "auto" (in place where the device shares host memory, else copied),
        "host_ptr" (always CL_MEM_USE_HOST_PTR) or "copy" (always copied to the device).
        resident: True: ops return CLArrays and nothing waits for the queue until `to_host`
        (ops.py hands other backends host copies); False: every op returns a host array;
        "auto" (default): False until `prepare()` (a model about to run its forwards through
        ops.py), then True - direct callers get numpy, a model's forward stays on the device.
        While `profile` is on (a recorder attached) a resident op still waits for its own
        commands, so each op's device time and wall time are its own.
        fuse: whether resident ops may hold back a launch for the op that reads the result
        ("Fusion" in the module docstring); None (default): yes unless `profile` is on."""
        if weights not in ("auto", "host_ptr", "copy"):
            raise ValueError(f"weights must be 'auto', 'host_ptr' or 'copy', not {weights!r}")
        if resident not in (True, False, "auto"):
            raise ValueError(f"resident must be True, False or 'auto', not {resident!r}")
        cl = self.cl = _cl()
        self.device = select_device(device)
        self.ctx, programs = _context_and_programs(cl, self.device)
        self.queue = cl.CommandQueue(self.ctx, self.device,
                                     properties=cl.command_queue_properties.PROFILING_ENABLE)
        self.pool = cl.tools.MemoryPool(cl.tools.ImmediateAllocator(self.queue))
        self._kernels = _Kernels(cl, programs, self.device)
        self._local_max = self._kernels.local_max
        self.local_mem = self.device.local_mem_size
        try:  # deprecated since OpenCL 2.0, still answered by PoCL and most 3.0 drivers
            shared = bool(self.device.host_unified_memory)
        except cl.Error:
            shared = False
        self.weights_in_place = weights == "host_ptr" or (weights == "auto" and shared)
        self.inputs_in_place = shared
        self.profile = profile
        self.resident_auto = resident == "auto"
        self.resident = resident is True
        # a CPU work-item walks whole rows (PoCL runs a group's work-items as a loop; a
        # reduction across them only costs: LX 1 doubled prompt speed, 52 -> 101 tok/s on
        # SmolLM2 pp64); other devices split a row over LX work-items
        self.is_cpu = bool(self.device.type & cl.device_type.CPU)
        self.matmul_lx, self.matmul_group = (1, MATMUL_GROUP_CPU) if self.is_cpu else (MATMUL_LX, MATMUL_GROUP)
        self.matvec_lx, self.matvec_group = (1, MATVEC_GROUP_CPU) if self.is_cpu else (MATMUL_LX, MATMUL_GROUP)
        self._rope_cs: tuple = (None, None)  # (key, device buffer of cos/sin) of the last rope
        self._plans: dict = {}  # launch shapes and constant arguments of decode matvecs
        self.fuse = fuse
        self._batchable: list = []  # held-back matvecs (_Lazy) that one launch may run together
        self._capture: dict | None = None  # while a decode step is recorded (StepGraph)
        self.kernel_events: list[dict] = []
        self._weights: dict[int, tuple] = {}  # id(tensor) -> (tensor, Buffer)
        self._pending: list = []  # (kernel name, event) of the commands not yet waited for
        self._keep: list = []  # host arrays that commands in flight read

    def __repr__(self) -> str:
        return f"OpenCLBackend({self.device.platform.name.strip()}: {self.device.name.strip()})"

    def describe(self) -> dict:
        """The device and the choices made for it (for reports)."""
        d = self.device
        return {"platform": d.platform.name.strip(), "device": d.name.strip(), "version": d.version.strip(),
                "driver": d.driver_version.strip(), "compute_units": d.max_compute_units,
                "max_work_group_size": d.max_work_group_size, "local_mem_size": d.local_mem_size,
                "weights_in_place": self.weights_in_place, "inputs_in_place": self.inputs_in_place,
                "resident": self.resident, "token_tile": TOKEN_TILE,
                "matmul_local": (self.matmul_lx, self.matmul_group),
                "matvec_local": (self.matvec_lx, self.matvec_group)}

    def supports(self, op, qtype=None):
        if op not in OPS:
            return False
        if op in ("matmul", "embed"):
            return qtype is not None and getattr(qtype, "name", qtype) in WEIGHT_TYPES
        return qtype is None

    # ---- plumbing -------------------------------------------------------------------------

    def _local(self, kernel: str, want: int) -> int:
        """A power-of-two work-group size for `kernel`: the smallest covering `want`, within
        what the device and the kernel allow."""
        return min(_pow2_ceil(want), self._local_max[kernel])

    def _launch(self, kernel: str, gsize: tuple, lsize: tuple, *args) -> None:
        if self._capture is not None:
            self._capture["actions"].append(functools.partial(_replay_launch, kernel, gsize, lsize, args))
        gsize = tuple(_round_up(g, l) for g, l in zip(gsize, lsize))
        k, setter = self._kernels[kernel], self._kernels.args.get(kernel)
        try:
            if setter is not None and setter.kernel is k:
                setter.set(args)
                ev = self.cl.enqueue_nd_range_kernel(self.queue, k, gsize, lsize)
            else:  # a kernel object put there by someone else (tests): called as it is
                ev = k(self.queue, gsize, lsize, *args)
        except self.cl.Error as e:  # the device rejected the launch (resources, sizes, memory)
            raise BackendError(f"{self.device.name.strip()} rejected kernel {kernel} "
                               f"(global {gsize}, local {lsize}): {e}") from e
        self._pending.append((kernel, ev))

    def _in(self, x, dtype=F32):
        """A device buffer holding x: a CLArray's own buffer; for a host array, the array
        itself where the device shares host memory (CL_MEM_USE_HOST_PTR: no copy command),
        else a fresh copy."""
        if isinstance(x, CLArray):
            if x.lazy is not None and x.lazy.kind is not None:
                self._force(x.lazy)
            return x.buf
        x = np.ascontiguousarray(x, dtype=dtype)
        self._keep.append(x)  # read by commands in flight: alive until the op completes
        if self.inputs_in_place and x.nbytes:
            mf = self.cl.mem_flags
            return self.cl.Buffer(self.ctx, mf.READ_ONLY | mf.USE_HOST_PTR, hostbuf=x)
        buf = self.pool.allocate(max(x.nbytes, 4))
        ev = self.cl.enqueue_copy(self.queue, buf, x, is_blocking=False)
        self._pending.append(("copy_h2d", ev))
        return buf

    def _alloc(self, n_floats: int):
        return self.pool.allocate(4 * max(n_floats, 1))

    def _out(self, buf, shape) -> np.ndarray:
        """Copy a result to the host (blocking: the op's commands are then all complete)."""
        if self._capture is not None:  # a result read back inside the step: the host took part
            self._capture["ok"] = False
        host = np.empty(shape, F32)
        ev = self.cl.enqueue_copy(self.queue, host, buf, is_blocking=True)
        self._pending.append(("copy_d2h", ev))
        self._finish()
        return host

    def _result(self, buf, shape, sums: int = -1):
        """An op's result: a CLArray (resident) or a host copy. Resident under a recorder
        (`profile`), the op waits for its commands so their times are the op's own."""
        if not self.resident:
            return self._out(buf, shape)
        if self.profile:
            self._finish()
        return CLArray(buf, shape, self, sums=sums)

    def prepare(self, weights) -> None:
        """A model will run its forwards through ops.py: with resident="auto", from now on
        activations stay on the device."""
        if self.resident_auto:
            self.resident = True

    def _rows(self, x: CLArray, a: int, b: int) -> CLArray:
        """Rows a..b of x's first axis, as a new device array."""
        row = x.size // x.shape[0] if x.shape[0] else 0
        src, buf = self._in(x), self._alloc(max(1, (b - a) * row))
        if b > a and row:
            self._step_action(functools.partial(_replay_copy, buf, src, 4 * (b - a) * row, 4 * a * row), None)
        return CLArray(buf, (b - a, *x.shape[1:]), self)

    def _finish(self) -> None:
        self._batchable = []  # held-back matvecs stay launchable one by one, no longer batched
        pending, self._pending, self._keep = self._pending, [], []
        if not pending:
            return
        self.cl.wait_for_events([ev for _, ev in pending])
        if self.profile:
            for name, ev in pending:
                p = ev.profile
                self.kernel_events.append({"kernel": name, "queued_ns": p.queued, "submit_ns": p.submit,
                                           "start_ns": p.start, "end_ns": p.end})

    # ---- a decode step recorded once and replayed (StepGraph) ----------------------------

    def can_capture(self) -> bool:
        """Whether a decode step can be recorded now: activations resident, launches fused,
        no recorder asking for each op's kernels."""
        return self._fusing()

    def begin_capture(self) -> None:
        """Record every launch and copy of the step that follows (Model.forward)."""
        self._capture = {"actions": [], "inputs": {}, "ok": True}

    def end_capture(self, logits, kv) -> "StepGraph | None":
        """The recorded step, its last launch the one that makes `logits`; None where it
        cannot be replayed (a result read back within it, a cache on the host, ...)."""
        try:
            out = self._in(logits)  # a held-back logits matvec is launched (and recorded) here
        finally:
            capture, self._capture = self._capture, None
        if not capture["ok"] or not isinstance(logits, CLArray):
            return None
        return StepGraph(self, capture["actions"], list(capture["inputs"].values()), out, logits.shape, kv)

    def cancel_capture(self) -> None:
        """Stop recording (a forward that raised); nothing is kept."""
        self._capture = None

    def _step_action(self, action, pos) -> None:
        """Run action(self, pos) now; while recording, the step keeps the action itself (it
        depends on the position), not the launches it made."""
        actions = self._capture["actions"] if self._capture is not None else None
        n = len(actions) if actions is not None else 0
        action(self, pos)
        if actions is not None:
            del actions[n:]
            actions.append(action)

    def _step_input(self, key, host: np.ndarray, fill):
        """While recording: a device buffer over `host` (kept with the step) that a replay
        refills first, fill(host, token, pos), as the recorded step filled it."""
        hit = self._capture["inputs"].get(key)
        if hit is None:
            mf = self.cl.mem_flags
            flags = mf.READ_ONLY | (mf.USE_HOST_PTR if self.inputs_in_place else mf.COPY_HOST_PTR)
            hit = self._capture["inputs"][key] = (host, self.cl.Buffer(self.ctx, flags, hostbuf=host), fill)
        return hit[1]

    def drain_kernel_events(self) -> list[dict]:
        """The timed kernels and copies since the last drain, oldest first; clears them."""
        events, self.kernel_events = self.kernel_events, []
        return events

    def _weight(self, w):
        """The device buffer of weight tensor w (made on first use, then cached)."""
        hit = self._weights.get(id(w))
        if hit is not None and hit[0] is w:
            return hit[1]
        cl, data = self.cl, w.data
        if data.nbytes > self.device.max_mem_alloc_size:
            raise BackendError(f"{getattr(w, 'name', 'weight')}: {data.nbytes} bytes exceed the device's "
                               f"largest buffer ({self.device.max_mem_alloc_size} bytes)")
        mf = cl.mem_flags
        try:
            # in place only at a 4-byte aligned address: kernels read block scales as 16- and
            # 32-bit words (a GGUF's general.alignment may be as small as 1); copies are aligned
            if self.weights_in_place and data.flags.c_contiguous and data.ctypes.data % 4 == 0:
                buf = cl.Buffer(self.ctx, mf.READ_ONLY | mf.USE_HOST_PTR, hostbuf=data)
            else:
                buf = cl.Buffer(self.ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=np.ascontiguousarray(data))
        except cl.Error as e:
            raise BackendError(f"cannot place {getattr(w, 'name', 'weight')} ({data.nbytes} bytes) "
                               f"on {self.device.name.strip()}: {e}") from e
        self._weights[id(w)] = (w, buf)
        return buf

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights this backend has made buffers for."""
        return sum(w.data.nbytes for w, _ in self._weights.values() if w.data is not None)

    def resources(self) -> dict:
        return {"weight_buffers": len(self._weights), "pool_held_blocks": self.pool.held_blocks,
                "pool_active_blocks": self.pool.active_blocks, "kernel_events_kept": len(self.kernel_events)}

    def to_host(self, x):
        """numpy for a CLArray (waits for the queue); anything else as it is."""
        if isinstance(x, CLArray):
            return self._out(self._in(x), x.shape)
        return x

    def close(self) -> None:
        try:
            self.queue.finish()
        except Exception:
            pass
        for _, buf in self._weights.values():
            buf.release()
        self._weights.clear()
        self._pending, self._keep = [], []
        self.pool.free_held()

    # ---- weights: embed, matmul -----------------------------------------------------------

    def embed(self, w, ids):
        ids = np.asarray(ids).reshape(-1)
        n, cols = len(ids), w.cols
        kernel = "embed_" + WEIGHT_TYPES[w.qtype.name]
        units = (cols + 31) // 32
        ls = self._local(kernel, min(units, 64))
        if self._capture is not None and n == 1:  # the token: refilled by every replay
            I = self._step_input("ids", np.array(ids, np.int32), _fill_token)
        else:
            I = self._in(ids, np.int32)
        W, Y = self._weight(w), self._alloc(n * cols)
        self._launch(kernel, (units, n), (ls, 1), W, np.int32(w.row_bytes), np.int32(cols), I, Y)
        return self._result(Y, (n, cols))

    def matmul(self, x, w):
        n, k = x.shape
        if k != w.cols:
            raise ValueError(f"matmul: x has {k} columns, {getattr(w, 'name', 'w')} has {w.cols}")
        rows = w.rows
        W, X, Y = self._weight(w), self._in(x), self._alloc(n * rows)
        if n == 1:
            sums = np.int32(x.sums if isinstance(x, CLArray) else -1)
            if self._fusing():  # held back: q, k, v may go in one launch, gate and up with their product
                lz = _Lazy("matvec", (w, W, X, Y, sums))
                self._batchable.append(lz)
                return CLArray(Y, (1, rows), self, lz)
            kernel, gsize, lsize, local = self._matvec_plan("matvec_", w.qtype.name, k, rows)
            self._launch(kernel, gsize, lsize, W, np.int32(w.row_bytes), np.int32(k), np.int32(rows), X, sums, Y,
                         local)
            return self._result(Y, (1, rows))
        kernel = "matmul_" + WEIGHT_TYPES[w.qtype.name]
        lx, ly = self._matmul_local(kernel, (k + 31) // 32, w.rows, TOKEN_TILE, self.matmul_lx, self.matmul_group)
        self._launch(kernel, (lx, w.rows, -(-n // TOKEN_TILE)), (lx, ly, 1), W, np.int32(w.row_bytes),
                     np.int32(k), np.int32(w.rows), X, np.int32(n), Y,
                     self.cl.LocalMemory(4 * TOKEN_TILE * lx * ly))
        return self._result(Y, (n, w.rows))

    def _matvec_plan(self, prefix: str, qtype: str, cols: int, rows: int) -> tuple:
        """(kernel, global size, local size, local memory) of a one-token launch over `rows`
        rows of `cols` weights, worked out once per shape."""
        key = (prefix, qtype, cols, rows, self.matvec_lx, self.matvec_group)
        plan = self._plans.get(key)
        if plan is None:
            kernel = prefix + WEIGHT_TYPES[qtype]
            lx, ly = self._matmul_local(kernel, (cols + 31) // 32, rows, 1, self.matvec_lx, self.matvec_group)
            plan = self._plans[key] = (kernel, (lx, _round_up(rows, ly)), (lx, ly), self.cl.LocalMemory(4 * lx * ly))
        return plan

    # ---- fusion: launches held back for the op that reads their result --------------------

    @property
    def can_fuse(self) -> bool:
        """Whether this backend has launches to fuse (activations resident on the device)."""
        return bool(self.resident)

    def _fusing(self) -> bool:
        return self.resident and (not self.profile if self.fuse is None else self.fuse)

    def _force(self, lz: _Lazy) -> None:
        """Launch a held-back kernel (its result is needed as it is). A matvec goes together
        with every other held-back matvec of the same input, type and width (q, k, v)."""
        kind, args = lz.kind, lz.args
        if kind == "add":
            A, B, S, N = args
            lz.kind = None
            self._launch("add", (N,), (self._local("add", MAX_LOCAL),), A, B, S, np.int32(N))
            return
        if kind == "rope":
            lz.kind = None
            self._launch("rope", *args)
            return
        w, _, X, _, _ = args
        same = [z for z in self._batchable if z.kind == "matvec" and z.args[2] is X and
                z.args[0].qtype.name == w.qtype.name and z.args[0].cols == w.cols and
                z.args[0].row_bytes == w.row_bytes]
        if lz not in same:
            same = [lz]
        self._batchable = [z for z in self._batchable if z not in same]
        for i in range(0, len(same), 3):
            self._matvecs(same[i:i + 3])

    def _matvecs(self, lazies: list) -> None:
        """One launch for one to three held-back matvecs of one input (matvec3_<type>)."""
        for z in lazies:
            z.kind = None
        w, _, X, _, sums = lazies[0].args
        if len(lazies) == 1:
            _, W, X, Y, _ = lazies[0].args
            kernel, gsize, lsize, local = self._matvec_plan("matvec_", w.qtype.name, w.cols, w.rows)
            self._launch(kernel, gsize, lsize, W, np.int32(w.row_bytes), np.int32(w.cols), np.int32(w.rows),
                         X, sums, Y, local)
            return
        parts = lazies + [lazies[0]] * (3 - len(lazies))
        counts = [z.args[0].rows for z in lazies] + [0] * (3 - len(lazies))
        kernel, gsize, lsize, local = self._matvec_plan("matvec3_", w.qtype.name, w.cols, sum(counts))
        self._launch(kernel, gsize, lsize, *(z.args[1] for z in parts), np.int32(w.row_bytes), np.int32(w.cols),
                     *(np.int32(c) for c in counts), X, sums, *(z.args[3] for z in parts), local)

    def _glu(self, g, u, act: int):
        """act(g) * u in one launch where g and u are held-back matvecs of the same input
        (the FFN's gate and up): matvec_glu_<type>; else None."""
        if not (self._fusing() and isinstance(g, CLArray) and isinstance(u, CLArray) and g.shape == u.shape):
            return None
        a, b = g.lazy, u.lazy
        if a is None or b is None or a is b or a.kind != "matvec" or b.kind != "matvec":
            return None
        (wg, Wg, X, _, sums), (wu, Wu, Xu, _, _) = a.args, b.args
        if Xu is not X or wg.qtype.name != wu.qtype.name or (wg.rows, wg.cols, wg.row_bytes) != \
                (wu.rows, wu.cols, wu.row_bytes):
            return None
        self._batchable = [z for z in self._batchable if z is not a and z is not b]  # g, u stay launchable
        kernel, gsize, lsize, local = self._matvec_plan("matvec_glu_", wg.qtype.name, wg.cols, wg.rows)
        out_sums = wg.rows if self.is_cpu and lsize[1] % 32 == 0 else -1  # for the down matvec
        Y = self._alloc(wg.rows + wg.rows // 32)
        self._launch(kernel, gsize, lsize, Wg, Wu, np.int32(wg.row_bytes), np.int32(wg.cols), np.int32(wg.rows),
                     X, sums, Y, np.int32(act), F32(np.sqrt(2.0 / np.pi)), np.int32(out_sums), local)
        return self._result(Y, g.shape, out_sums)

    def _matmul_local(self, kernel: str, units: int, rows: int, tile: int, max_lx: int,
                      group: int) -> tuple[int, int]:
        """(LX work-items per row, LY rows) of a matmul work-group: LX covers the row's units
        up to max_lx; LY fills the group up to `group` work-items."""
        limit = self._local_max[kernel]
        lx = min(_pow2_ceil(units), max_lx, limit)
        ly = max(1, min(group // lx, limit // lx, _pow2_ceil(rows)))
        while ly > 1 and 4 * tile * lx * ly > self.local_mem:
            ly //= 2
        return lx, ly

    # ---- activations ----------------------------------------------------------------------

    def rms_norm(self, x, weight, eps):
        d = x.shape[-1]
        rows = x.size // d
        lz = x.lazy if isinstance(x, CLArray) else None
        fused = lz is not None and lz.kind == "add"  # a held-back residual add: add and norm in one launch
        if fused:
            lz.kind = None
            inputs = lz.args[:3]  # A, B and S (the sum, stored: the residual stream)
        else:
            inputs = (self._in(x),)
        kernel = "add_rms_norm" if fused else "rms_norm"
        sums = x.size if rows == 1 else -1  # one row (decode): its unit sums after it, for the matvecs
        Wt, Y = self._in(weight), self._alloc(x.size + (d // 32 if sums >= 0 else 0))
        if not self._by_rows(kernel, d, rows, *inputs, Wt, Y, np.int32(d), F32(eps), np.int32(sums)):
            sums = -1
            ls = self._local(kernel, min(d, MAX_LOCAL))
            self._launch(kernel, (rows * ls,), (ls,), *inputs, Wt, Y, np.int32(d), F32(eps),
                         self.cl.LocalMemory(4 * ls))
        return self._result(Y, x.shape, sums)

    def rope(self, x, pos, theta_base, mode, n_rot=None):
        if mode not in (ROPE_NORM, ROPE_NEOX):
            raise ValueError(f"unknown rope mode {mode!r}")
        n, H, hd = x.shape
        n_rot = hd if n_rot is None else n_rot
        ls = self._local("rope", min(hd, 64))
        X, CS, Y = self._in(x), self._rotation(pos, theta_base, n_rot), self._alloc(x.size)
        args = (X, CS, Y, np.int32(H), np.int32(hd), np.int32(n_rot), np.int32(mode == ROPE_NEOX))
        if n == 1 and self._fusing():  # held back: a decode attention rotates q and k itself
            return CLArray(Y, x.shape, self, _Lazy("rope", ((hd, H, n), (ls, 1, 1)) + args))
        self._launch("rope", (hd, H, n), (ls, 1, 1), *args)
        return self._result(Y, x.shape)

    def _rotation(self, pos, theta_base: float, n_rot: int):
        """A device buffer of cos/sin (n, n_rot/2, 2) of every (token, pair), exactly as the
        numpy reference rounds them; the last one is kept: every layer's q and k rotate the
        same positions by the same bases."""
        pos = np.asarray(pos, np.float64).reshape(-1)
        if self._capture is not None and len(pos) == 1:  # one position: refilled by every replay
            fill = functools.partial(_fill_rotation, float(theta_base), int(n_rot))
            return self._step_input(("cs", float(theta_base), int(n_rot)), _cos_sin(pos, theta_base, n_rot), fill)
        key = (pos.tobytes(), float(theta_base), int(n_rot))
        if self._rope_cs[0] != key:
            cs = _cos_sin(pos, theta_base, n_rot)
            mf = self.cl.mem_flags
            self._keep.append(self._rope_cs[1])  # commands in flight may still read the last one
            self._rope_cs = (key, self.cl.Buffer(self.ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=cs))
        return self._rope_cs[1]

    def _by_rows(self, kernel: str, m: int, rows: int, *args) -> bool:
        """On a CPU device, for rows of at most ROW_MAX values: launch `<kernel>_row`, a
        work-item per row (norm.cl; `args`, then the row count), and say so. Else False: the
        caller launches its work-group kernel."""
        if not (self.is_cpu and m <= ROW_MAX):
            return False
        ls = self._local(kernel + "_row", MATVEC_GROUP_CPU)
        self._launch(kernel + "_row", (rows,), (ls,), *args, np.int32(rows))
        return True

    def _softmax_rows(self, X, Y, rows: int, m: int) -> None:
        if self._by_rows("softmax", m, rows, X, Y, np.int32(m)):
            return
        ls = self._local("softmax", min(m, MAX_LOCAL))
        self._launch("softmax", (rows * ls,), (ls,), X, Y, np.int32(m), self.cl.LocalMemory(4 * ls))

    def softmax(self, x):
        m = x.shape[-1]
        X, Y = self._in(x), self._alloc(x.size)
        self._softmax_rows(X, Y, x.size // m, m)
        return self._result(Y, x.shape)

    def _elementwise(self, kernel: str, inputs: list, scalars: tuple = (), per_item: int = 1) -> np.ndarray:
        """per_item: values a work-item takes (elementwise.cl)."""
        shape = np.broadcast_shapes(*(a.shape for a in inputs))
        arrays = [a if a.shape == shape else np.broadcast_to(a, shape) for a in inputs]
        N = math.prod(shape)
        bufs = [self._in(a) for a in arrays]
        Y = self._alloc(N)
        ls = self._local(kernel, MAX_LOCAL)
        self._launch(kernel, (-(-N // per_item),), (ls,), *bufs, Y, np.int32(N), *scalars)
        return self._result(Y, shape)

    def silu_mul(self, g, u):
        y = self._glu(g, u, 0)
        return self._elementwise("silu_mul", [g, u], per_item=8) if y is None else y

    def gelu_mul(self, g, u):
        y = self._glu(g, u, 1)
        return self._elementwise("gelu_mul", [g, u], (F32(np.sqrt(2.0 / np.pi)),), per_item=8) if y is None else y

    def add(self, a, b):
        if self._fusing() and isinstance(a, CLArray) and isinstance(b, CLArray) and a.shape == b.shape:
            A, B, S = self._in(a), self._in(b), self._alloc(a.size)  # held back for an rms_norm
            return CLArray(S, a.shape, self, _Lazy("add", (A, B, S, a.size)))
        return self._elementwise("add", [a, b])

    def scale(self, x, s):
        return self._elementwise("scale", [x], (F32(s),))

    # ---- attention over a device-resident KV cache ----------------------------------------

    def new_kv_cache(self, n_layer, n_ctx, n_head_kv, head_dim):
        """Device buffers, not cleared: attention reads only positions it has stored (oclgrind
        --uninitialized checks exactly that; a clear would hide a violation, and oclgrind
        21.10 mis-tracks kernel stores after a fill)."""
        nbytes = 4 * n_ctx * n_head_kv * head_dim
        mf = self.cl.mem_flags
        try:
            bufs = [self.cl.Buffer(self.ctx, mf.READ_WRITE, nbytes) for _ in range(2 * n_layer)]
        except self.cl.Error as e:
            raise BackendError(f"cannot allocate a KV cache of 2 x {n_layer} x {nbytes} bytes on "
                               f"{self.device.name.strip()}: {e}") from e
        return CLKVCache(bufs[:n_layer], bufs[n_layer:], n_ctx, n_head_kv, head_dim)

    def kv_to_host(self, cache, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(k, v) of one layer as host arrays (n_ctx, n_head_kv, head_dim); positions not yet
        stored hold whatever the device memory held."""
        if not isinstance(cache, CLKVCache):
            return cache.k[layer], cache.v[layer]
        shape = (cache.n_ctx, cache.n_head_kv, cache.head_dim)
        return self._out(cache.k[layer], shape), self._out(cache.v[layer], shape)

    def attention(self, q, k, v, cache, layer, pos, scale, window=None):
        n, H, hd = q.shape
        Hkv = k.shape[1]
        T = pos + n
        if self._capture is not None and not (isinstance(cache, CLKVCache) and n == 1):
            self._capture["ok"] = False  # only a one-token attention over a device cache replays
        if T > cache.n_ctx:
            raise ValueError(f"attention: positions up to {T} exceed the cache's n_ctx {cache.n_ctx}")
        win = np.int32(-1 if window is None else window)
        if isinstance(cache, CLKVCache) and n == 1:
            lq, lk = (a.lazy if isinstance(a, CLArray) else None for a in (q, k))
            if lq is not None and lk is not None and lq.kind == lk.kind == "rope" and lq.args[3] is lk.args[3] \
                    and lq.args[7:] == lk.args[7:]:  # held-back ropes of q and k (same rotation): fused here
                (Q, CS, _, _, _, n_rot, neox), (Kn, *_) = lq.args[2:], lk.args[2:]
                rot = np.int32(1)  # the rope launches stay held back (launched if their results are read)
            else:  # q and k as they are (CS: any buffer, unread)
                Q, Kn, rot = self._in(q), self._in(k), np.int32(0)
                CS, n_rot, neox = Q, np.int32(0), np.int32(0)
            # scores for every position a replayed step may reach while capturing, else for T
            O, S = self._alloc(H * hd), self._alloc(H * (cache.n_ctx if self._capture is not None else T))
            fixed = (Q, Kn, self._in(v), cache.k[layer], cache.v[layer], S, O, np.int32(H), np.int32(Hkv),
                     np.int32(hd))
            self._step_action(functools.partial(_replay_attention, fixed, (F32(scale), win, CS, n_rot, neox, rot),
                                                H, hd), pos)
            return self._result(O, (n, H * hd))
        if isinstance(cache, CLKVCache):
            K, V = cache.k[layer], cache.v[layer]
            N = n * Hkv * hd
            self._launch("kv_store", (N,), (self._local("kv_store", MAX_LOCAL),), self._in(k), self._in(v), K, V,
                         np.int32(pos * Hkv * hd), np.int32(N))
        else:  # a host cache (made by another backend): keep it current, upload what we read
            cache.k[layer][pos:T] = np.asarray(k)
            cache.v[layer][pos:T] = np.asarray(v)
            # copies: the next call writes the cache while a resident queue may still read
            K, V = self._in(cache.k[layer][:T].copy()), self._in(cache.v[layer][:T].copy())
        Q, O = self._in(q), self._alloc(n * H * hd)
        chunk = max(1, SCORES_FLOATS // (H * T))  # queries per scores buffer
        for i0 in range(0, n, chunk):
            m, at = min(chunk, n - i0), np.int32(i0 * H * hd)
            S = self._alloc(m * H * T)
            common = (np.int32(H), np.int32(Hkv), np.int32(hd), np.int32(pos + i0), np.int32(T))
            ls = self._local("attn_scores", min(T, 64))
            self._launch("attn_scores", (T, H, m), (ls, 1, 1), Q, at, K, S, *common, F32(scale), win)
            self._softmax_rows(S, S, m * H, T)
            cols = hd // 8 + hd % 8  # work-items of an output row (attention.cl)
            ls = self._local("attn_values", min(cols, 64))
            self._launch("attn_values", (cols, H, m), (ls, 1, 1), S, V, O, at, *common, win)
        return self._result(O, (n, H * hd))
