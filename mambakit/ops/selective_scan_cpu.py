"""Fused CPU kernels (numba) for the selective scan, its backward pass and the one-token decode.

Shape letters used in this module:

    b   batch
    l   sequence length
    d   channels of the scan (the mixer's ``d_inner``)
    n   state size per channel (``d_state``)

The forward kernel fuses the bias, the softplus, the ``exp(dt * A)`` discretization, the
recurrence, the ``D`` skip and the ``silu(z)`` gate. It keeps only the running (n,) state of each
channel, so the (b, l, d, n) tensor of all states is never written. With autograd it also stores
the state at the start of every chunk of ``CHECKPOINT_INTERVAL`` steps, and the backward kernel
rebuilds the states of one chunk at a time from those checkpoints instead of storing all of them.

Kernels work on blocks of neighbouring channels in the (b, l, d) layout of the inputs. At each
step a block reads one contiguous run of ``u``, ``delta`` and ``z``, and the innermost loops run
over the channels of the block, so they vectorize whatever ``d_state`` is. A transpose to a
(b, d, l) layout would cost extra passes over the inputs and the output for no gain.

fp32 inputs run in fp32 with the approximations of ``exp``, ``softplus`` and ``sigmoid`` below
(relative error below 4e-7), which LLVM can vectorize. fp64 inputs run in fp64 with ``math.exp``
and ``math.log1p``, so ``torch.autograd.gradcheck`` works. fp16 and bf16 inputs run in fp32.
"""

from __future__ import annotations

import contextlib
import logging
import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

from mambakit.ops.kernel_probe import (
    DISABLE_ENV_VAR as DISABLE_ENV_VAR,  # tests and users read it here
)
from mambakit.ops.kernel_probe import KernelProbe
from mambakit.ops.selective_scan import _check_shapes, _check_update_shapes, selective_scan_reference

logger = logging.getLogger(__name__)


# Steps between two stored states. The backward pass keeps the states of one chunk per channel
# block in a local buffer, so a longer interval costs cache space there. A shorter one costs memory
# for the checkpoints, which take d_state / CHECKPOINT_INTERVAL times the size of ``u``.
CHECKPOINT_INTERVAL = 64

# Channels per block in the forward kernel: 64 fp32 values are one 256-byte run per step.
FORWARD_BLOCK = 64

# Floats per time step in the backward chunk buffer (d_state * channels). It sets the channels per
# block there, and with d_state <= 128 the buffer of CHECKPOINT_INTERVAL + 1 steps stays within
# 260 KiB in fp32, which fits in L2. The inner loops run over the channels of a block and pay a
# fixed setup cost per state entry, so wider blocks are faster. On a 2-core AMD EPYC (d_state 16,
# d_inner 1536, length 2048), 1024 ran about 20% faster than 512.
BACKWARD_BLOCK_FLOATS = 1024

# Below this many (batch * length * d_inner * d_state) state updates, a call runs on one thread
# (about 60 us of fp32 forward work). Waking numba's thread pool has a fixed cost per call, which
# grows to milliseconds when other jobs keep the cores busy. On a shared 2-core AMD EPYC, the 90th
# percentile of a 2-thread decode step (b 1, d_inner 1536, d_state 16) was 24 ms, against 84 us
# on one thread.
SERIAL_WORK_LIMIT = 2**17

# Channels per task of the one-token update. At d_inner 1536 and batch 1 this gives 24 tasks.
UPDATE_BLOCK = 64

# Fast-math flags without "nnan" and "ninf", so NaN and inf inputs are not assumed away.
# "reassoc" lets LLVM vectorize the sums over channels, and "afn" allows approximate math calls.
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

_JIT = dict(parallel=True, cache=True, nogil=True, fastmath=_FASTMATH)


# --- fp32 math that vectorizes ---------------------------------------------------------------
#
# numba has no vector exp without Intel's SVML, so a scalar call to expf in the inner loop would
# dominate the runtime. These versions use only arithmetic, rounding and a bit cast.

_F32_LOG2E = np.float32(1.4426950408889634)
_F32_LN2_HI = np.float32(0.693359375)  # ln 2 split in two (Cody-Waite) so r = x - k ln 2 stays exact
_F32_LN2_LO = np.float32(-2.12194440e-4)
_F32_EXP_MIN = np.float32(-87.3)  # below this, exp returns 0 (the true value is under 1.2e-38)
_F32_EXP_MAX = np.float32(88.3)  # keeps 2**k finite, k <= 127
_F32_ZERO = np.float32(0.0)
_F32_HALF = np.float32(0.5)
_F32_ONE = np.float32(1.0)
_F32_TWO = np.float32(2.0)
_F32_SOFTPLUS_THRESHOLD = np.float32(20.0)  # torch.nn.functional.softplus returns x above this
_F32_INV_FACTORIALS = tuple(np.float32(1.0 / math.factorial(i)) for i in range(2, 7))
_F32_INV_ODD = tuple(np.float32(1.0 / i) for i in range(3, 17, 2))


@intrinsic
def _f32_pow2(typingctx, k):
    """Return 2**k for an integral fp32 ``k`` in [-126, 127] by writing the exponent bits."""
    signature = types.float32(types.float32)

    def codegen(context, builder, sig, args):
        int32 = ir.IntType(32)
        exponent = builder.fptosi(args[0], int32)
        exponent = builder.add(exponent, ir.Constant(int32, 127))
        bits = builder.shl(exponent, ir.Constant(int32, 23))
        return builder.bitcast(bits, ir.FloatType())

    return signature, codegen


def _exp(x):
    """Return exp(x). Kernels call this stub so that fp32 arguments get the overload below."""
    return math.exp(x)


def _softplus(x):
    """Return log(1 + exp(x)), or x itself above 20 as torch.nn.functional.softplus does."""
    return x if x > 20.0 else math.log1p(math.exp(x))


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


@overload(_exp, fastmath=_FASTMATH)
def _overload_exp(x):
    if x != types.float32:
        return lambda x: math.exp(x)

    c2, c3, c4, c5, c6 = _F32_INV_FACTORIALS

    def exp_f32(x):
        # exp(x) = 2**k * exp(r) with k = round(x / ln 2) and |r| <= ln(2) / 2, where a degree-6
        # Taylor polynomial is accurate to about 1.2e-7 relative.
        clamped = min(max(x, _F32_EXP_MIN), _F32_EXP_MAX)
        k = np.floor(clamped * _F32_LOG2E + _F32_HALF)
        r = clamped - k * _F32_LN2_HI - k * _F32_LN2_LO
        poly = _F32_ONE + r * (_F32_ONE + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * c6)))))
        value = poly * _f32_pow2(k)
        return value if x >= _F32_EXP_MIN else _F32_ZERO

    return exp_f32


@overload(_softplus, fastmath=_FASTMATH)
def _overload_softplus(x):
    if x != types.float32:
        return lambda x: x if x > 20.0 else math.log1p(math.exp(x))

    c3, c5, c7, c9, c11, c13, c15 = _F32_INV_ODD

    def softplus_f32(x):
        # softplus(x) = max(x, 0) + log1p(e) with e = exp(-|x|) in (0, 1]. log1p(e) = 2 atanh(s)
        # with s = e / (2 + e) <= 1/3, whose odd series converges fast and keeps the relative
        # error small even for tiny e.
        e = _exp(-abs(x))
        s = e / (_F32_TWO + e)
        s2 = s * s
        series = _F32_ONE + s2 * (c3 + s2 * (c5 + s2 * (c7 + s2 * (c9 + s2 * (c11 + s2 * (c13 + s2 * c15))))))
        value = max(x, _F32_ZERO) + _F32_TWO * s * series
        return x if x > _F32_SOFTPLUS_THRESHOLD else value

    return softplus_f32


@overload(_sigmoid, fastmath=_FASTMATH)
def _overload_sigmoid(x):
    if x != types.float32:
        return lambda x: 1.0 / (1.0 + math.exp(-x))

    def sigmoid_f32(x):
        return _F32_ONE / (_F32_ONE + _exp(-x))

    return sigmoid_f32


# --- kernels ----------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _task_block(task, n_blocks, block, d_inner):
    """Return (batch row, first channel, end channel) of parallel task ``task``.

    Kernels split the work into batch * n_blocks tasks of ``block`` neighbouring channels each.
    """
    b = task // n_blocks
    d0 = (task - b * n_blocks) * block
    return b, d0, min(d0 + block, d_inner)


@numba.njit(**_JIT)
def _scan_forward_kernel(
    u, delta, A_t, B, C, D, delta_bias, z, has_z, delta_softplus,
    initial_state, y, final_state, checkpoints, interval, block,
):  # fmt: skip
    """Run the fused scan, writing ``y`` and ``final_state``, and ``checkpoints`` if not empty.

    u, delta, z, y: (b, l, d). A_t: (n, d), the transpose of A. B, C: (b, l, n).
    D, delta_bias: (d,). initial_state, final_state: (b, d, n). z is ignored unless ``has_z``.
    checkpoints: (b, ceil(l / interval), d, n) receives the state before steps 0, interval, ...;
    pass a (b, 0, d, n) array to skip them.
    """
    batch, length, d_inner = u.shape
    d_state = A_t.shape[0]
    store = checkpoints.shape[1] > 0
    n_blocks = (d_inner + block - 1) // block

    for task in prange(batch * n_blocks):
        b, d0, d1 = _task_block(task, n_blocks, block, d_inner)
        width = d1 - d0

        # State and A of the block as (n, channels), so the inner loop runs over channels.
        h = np.empty((d_state, width), dtype=u.dtype)
        a = np.empty((d_state, width), dtype=u.dtype)
        for k in range(d_state):
            for c in range(width):
                h[k, c] = initial_state[b, d0 + c, k]
                a[k, c] = A_t[k, d0 + c]
        dt = np.empty(width, dtype=u.dtype)
        dt_u = np.empty(width, dtype=u.dtype)
        acc = np.empty(width, dtype=u.dtype)
        D_block = D[d0:d1]
        bias_block = delta_bias[d0:d1]

        for t in range(length):
            if store and t % interval == 0:
                for c in range(width):
                    for k in range(d_state):
                        checkpoints[b, t // interval, d0 + c, k] = h[k, c]

            # Row views keep the channel offset out of the index. Indexed as u[b, t, d0 + c], the
            # loads compile to gathers, because numba adds a wraparound for negative indices.
            u_row = u[b, t, d0:d1]
            delta_row = delta[b, t, d0:d1]
            for c in range(width):
                step = delta_row[c] + bias_block[c]
                if delta_softplus:
                    step = _softplus(step)
                dt[c] = step
                dt_u[c] = step * u_row[c]
                acc[c] = 0.0

            for k in range(d_state):
                b_k = B[b, t, k]
                c_k = C[b, t, k]
                for c in range(width):
                    state = _exp(dt[c] * a[k, c]) * h[k, c] + dt_u[c] * b_k
                    h[k, c] = state
                    acc[c] += c_k * state

            y_row = y[b, t, d0:d1]
            for c in range(width):
                y_row[c] = acc[c] + D_block[c] * u_row[c]
            if has_z:
                z_row = z[b, t, d0:d1]
                for c in range(width):
                    gate = z_row[c]
                    y_row[c] *= gate * _sigmoid(gate)

        for c in range(width):
            for k in range(d_state):
                final_state[b, d0 + c, k] = h[k, c]


@numba.njit(**_JIT)
def _scan_backward_kernel(
    u, delta, A_t, B, C, D, delta_bias, z, has_z, delta_softplus,
    checkpoints, interval, block, n_groups, grad_y, grad_final,
    grad_u, grad_delta, grad_z, grad_A_parts, grad_B_parts, grad_C_parts,
    grad_D_parts, grad_bias_parts, grad_initial,
):  # fmt: skip
    """Write the gradients of the scan, rebuilding its states chunk by chunk from ``checkpoints``.

    Inputs are those of ``_scan_forward_kernel``; checkpoints: (b, ceil(l / interval), d, n).
    grad_y: (b, l, d). grad_final: (b, d, n).
    Writes grad_u, grad_delta, grad_z: (b, l, d) (grad_z only if ``has_z``) and grad_initial:
    (b, d, n). Partial sums that the caller adds up:
    grad_A_parts: (b, d, n), grad_D_parts and grad_bias_parts: (b, d), summed over b.
    grad_B_parts, grad_C_parts: (n_groups, b, l, n), zero on entry, summed over the groups.

    B and C are shared by all channels, so each task (one batch row and one group of channel
    blocks) accumulates into its own slice of the parts and no two threads write the same place.
    """
    batch, length, d_inner = u.shape
    d_state = A_t.shape[0]
    n_chunks = checkpoints.shape[1]
    n_blocks = (d_inner + block - 1) // block

    for task in prange(batch * n_groups):
        b = task // n_groups
        group = task - b * n_groups
        first_block = group * n_blocks // n_groups
        end_block = (group + 1) * n_blocks // n_groups

        # Per-chunk buffers: states before and after each step, step sizes, and pre-gate outputs.
        states = np.empty((interval + 1, d_state, block), dtype=u.dtype)
        steps = np.empty((interval, block), dtype=u.dtype)
        steps_u = np.empty((interval, block), dtype=u.dtype)
        pre_gate = np.empty((interval, block), dtype=u.dtype)
        a = np.empty((d_state, block), dtype=u.dtype)
        grad_h = np.empty((d_state, block), dtype=u.dtype)
        grad_a = np.empty((d_state, block), dtype=u.dtype)
        grad_dt = np.empty(block, dtype=u.dtype)
        grad_out = np.empty(block, dtype=u.dtype)
        grad_drive = np.empty(block, dtype=u.dtype)
        grad_D_acc = np.empty(block, dtype=u.dtype)
        grad_bias_acc = np.empty(block, dtype=u.dtype)
        acc = np.empty(block, dtype=u.dtype)
        # A zero of the array dtype: a 0.0 literal would turn fp32 sums into fp64 ones.
        zero = np.zeros(1, dtype=u.dtype)[0]

        for block_index in range(first_block, end_block):
            d0 = block_index * block
            d1 = min(d0 + block, d_inner)
            width = d1 - d0
            D_block = D[d0:d1]
            bias_block = delta_bias[d0:d1]
            for k in range(d_state):
                for c in range(width):
                    a[k, c] = A_t[k, d0 + c]
                    grad_h[k, c] = grad_final[b, d0 + c, k]
                    grad_a[k, c] = 0.0
            for c in range(width):
                grad_D_acc[c] = 0.0
                grad_bias_acc[c] = 0.0

            for chunk in range(n_chunks - 1, -1, -1):
                t0 = chunk * interval
                steps_in_chunk = min(interval, length - t0)

                # Rebuild the states of this chunk from its checkpoint.
                for c in range(width):
                    for k in range(d_state):
                        states[0, k, c] = checkpoints[b, chunk, d0 + c, k]
                for i in range(steps_in_chunk):
                    t = t0 + i
                    u_row = u[b, t, d0:d1]
                    delta_row = delta[b, t, d0:d1]
                    dt = steps[i]
                    dt_u = steps_u[i]
                    for c in range(width):
                        step = delta_row[c] + bias_block[c]
                        if delta_softplus:
                            step = _softplus(step)
                        dt[c] = step
                        dt_u[c] = step * u_row[c]
                        acc[c] = 0.0
                    h_before = states[i]
                    h_after = states[i + 1]
                    for k in range(d_state):
                        b_k = B[b, t, k]
                        c_k = C[b, t, k]
                        for c in range(width):
                            state = _exp(dt[c] * a[k, c]) * h_before[k, c] + dt_u[c] * b_k
                            h_after[k, c] = state
                            acc[c] += c_k * state
                    if has_z:
                        for c in range(width):
                            pre_gate[i, c] = acc[c] + D_block[c] * u_row[c]

                # Walk the chunk backward. On entry to step t, grad_h is dLoss/dh after step t,
                # and on exit it is dLoss/dh before step t.
                for i in range(steps_in_chunk - 1, -1, -1):
                    t = t0 + i
                    u_row = u[b, t, d0:d1]
                    grad_y_row = grad_y[b, t, d0:d1]
                    dt = steps[i]
                    dt_u = steps_u[i]
                    for c in range(width):
                        grad_out[c] = grad_y_row[c]
                    if has_z:
                        z_row = z[b, t, d0:d1]
                        grad_z_row = grad_z[b, t, d0:d1]
                        for c in range(width):
                            gate = z_row[c]
                            sig = _sigmoid(gate)
                            grad_z_row[c] = grad_out[c] * pre_gate[i, c] * sig * (1.0 + gate * (1.0 - sig))
                            grad_out[c] *= gate * sig
                    for c in range(width):
                        grad_D_acc[c] += grad_out[c] * u_row[c]
                        grad_dt[c] = 0.0
                        grad_drive[c] = 0.0

                    h_before = states[i]
                    h_after = states[i + 1]
                    for k in range(d_state):
                        b_k = B[b, t, k]
                        c_k = C[b, t, k]
                        grad_b_k = zero
                        grad_c_k = zero
                        for c in range(width):
                            decay = _exp(dt[c] * a[k, c])
                            g_h = grad_h[k, c] + grad_out[c] * c_k
                            grad_c_k += grad_out[c] * h_after[k, c]
                            g_decay = g_h * h_before[k, c] * decay
                            grad_dt[c] += g_decay * a[k, c]
                            grad_a[k, c] += g_decay * dt[c]
                            grad_b_k += g_h * dt_u[c]
                            grad_drive[c] += g_h * b_k
                            grad_h[k, c] = g_h * decay
                        grad_B_parts[group, b, t, k] += grad_b_k
                        grad_C_parts[group, b, t, k] += grad_c_k

                    grad_u_row = grad_u[b, t, d0:d1]
                    grad_delta_row = grad_delta[b, t, d0:d1]
                    delta_row = delta[b, t, d0:d1]
                    for c in range(width):
                        # The drive dt * u * B_k adds sum_k(dLoss/dh_k * B_k) times u to the
                        # gradient of dt and times dt to that of u.
                        grad_u_row[c] = grad_out[c] * D_block[c] + grad_drive[c] * dt[c]
                        g_delta = grad_dt[c] + grad_drive[c] * u_row[c]
                        if delta_softplus:
                            g_delta = g_delta * _sigmoid(delta_row[c] + bias_block[c])
                        grad_delta_row[c] = g_delta
                        grad_bias_acc[c] += g_delta

            for c in range(width):
                for k in range(d_state):
                    grad_initial[b, d0 + c, k] = grad_h[k, c]
                    grad_A_parts[b, d0 + c, k] = grad_a[k, c]
                grad_D_parts[b, d0 + c] = grad_D_acc[c]
                grad_bias_parts[b, d0 + c] = grad_bias_acc[c]


@numba.njit(**_JIT)
def _state_update_kernel(state, x, dt, A, B, C, D, dt_bias, z, has_z, dt_softplus, block, y):
    """Advance ``state`` (b, d, n) by one token in place and write ``y`` (b, d).

    x, dt, z: (b, d). A: (d, n). B, C: (b, n). D, dt_bias: (d,). z is ignored unless ``has_z``.
    Each task takes one batch row and ``block`` neighbouring channels. The step sizes and the
    gate are computed for the whole block first, in loops over channels that vectorize. Inside
    the per-channel state loop, softplus and sigmoid ran as scalar code and took three quarters
    of a batch-64 update at the 130m shapes (2-core AMD EPYC).
    """
    batch, d_inner, d_state = state.shape
    n_blocks = (d_inner + block - 1) // block
    for task in prange(batch * n_blocks):
        b, d0, d1 = _task_block(task, n_blocks, block, d_inner)
        width = d1 - d0
        x_row = x[b, d0:d1]
        dt_row = dt[b, d0:d1]
        bias_block = dt_bias[d0:d1]

        step = np.empty(width, dtype=state.dtype)
        if dt_softplus:
            for c in range(width):
                step[c] = _softplus(dt_row[c] + bias_block[c])
        else:
            for c in range(width):
                step[c] = dt_row[c] + bias_block[c]
        out = np.empty(width, dtype=state.dtype)
        D_block = D[d0:d1]
        for c in range(width):
            out[c] = D_block[c] * x_row[c]

        B_row = B[b]
        C_row = C[b]
        for c in range(width):
            d = d0 + c
            step_c = step[c]
            step_x = step_c * x_row[c]
            h_row = state[b, d]
            A_row = A[d]
            acc = out[c]
            for k in range(d_state):
                h = _exp(step_c * A_row[k]) * h_row[k] + step_x * B_row[k]
                h_row[k] = h
                acc += h * C_row[k]
            out[c] = acc

        y_row = y[b, d0:d1]
        if has_z:
            z_row = z[b, d0:d1]
            for c in range(width):
                gate = z_row[c]
                y_row[c] = out[c] * gate * _sigmoid(gate)
        else:
            for c in range(width):
                y_row[c] = out[c]


# --- torch glue -------------------------------------------------------------------------------


def _as_array(tensor: torch.Tensor) -> np.ndarray:
    # A view when the tensor is already contiguous, a copy otherwise.
    return tensor.detach().contiguous().numpy()


@contextlib.contextmanager
def _threads_for(work: int):
    """Run the enclosed kernel calls on one numba thread when ``work`` is below SERIAL_WORK_LIMIT."""
    if work >= SERIAL_WORK_LIMIT:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _backward_block_width(d_state: int, d_inner: int) -> int:
    """Return the channels per block of the backward kernel: a power of two in [8, 64], or d_inner if smaller."""
    width = 8
    while width < 64 and width * 2 * d_state <= BACKWARD_BLOCK_FLOATS:
        width *= 2
    return max(1, min(width, d_inner))


def _backward_group_count(batch: int, n_blocks: int) -> int:
    """Return how many channel groups to split each batch row into for the backward kernel.

    Two tasks per thread balance the static schedule of prange. More groups cost memory, because
    each one has its own (b, l, n) partial sums of the B and C gradients.
    """
    target_tasks = 2 * numba.get_num_threads()
    return max(1, min(n_blocks, -(-target_tasks // max(batch, 1))))


class _SelectiveScanFunction(torch.autograd.Function):
    """Autograd wrapper around the kernels; all tensor inputs share one dtype (fp32 or fp64)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
        batch, length, d_inner = u.shape
        d_state = A.shape[1]
        dtype = u.dtype
        has_z = z is not None
        # D, delta_bias and A may be parameters (after a no-op cast). A numpy view of a parameter's
        # storage makes it non-resizable, and FSDP frees gathered parameters by resizing, so the
        # kernels get copies of these small tensors.
        D_filled = D.clone() if D is not None else u.new_zeros(d_inner)
        bias_filled = delta_bias.clone() if delta_bias is not None else u.new_zeros(d_inner)
        initial_filled = initial_state if initial_state is not None else u.new_zeros(batch, d_inner, d_state)
        z_filled = z if has_z else u.new_zeros(0, 0, 0)
        A_t = A.t().clone(memory_format=torch.contiguous_format)

        # Store checkpoints only when a backward pass can follow.
        n_chunks = -(-length // CHECKPOINT_INTERVAL) if any(ctx.needs_input_grad) else 0
        checkpoints = torch.empty(batch, n_chunks, d_inner, d_state, dtype=dtype)
        y = torch.empty(batch, length, d_inner, dtype=dtype)
        final_state = torch.empty(batch, d_inner, d_state, dtype=dtype)

        with _threads_for(batch * length * d_inner * d_state):
            _scan_forward_kernel(
                _as_array(u), _as_array(delta), _as_array(A_t), _as_array(B), _as_array(C),
                _as_array(D_filled), _as_array(bias_filled), _as_array(z_filled), has_z, delta_softplus,
                _as_array(initial_filled), y.numpy(), final_state.numpy(), checkpoints.numpy(),
                CHECKPOINT_INTERVAL, FORWARD_BLOCK,
            )  # fmt: skip

        ctx.delta_softplus = delta_softplus
        ctx.has_z = has_z
        ctx.interval = CHECKPOINT_INTERVAL
        ctx.save_for_backward(u, delta, A_t, B, C, D_filled, bias_filled, z_filled, checkpoints)
        return y, final_state

    @staticmethod
    def backward(ctx, grad_y, grad_final):
        u, delta, A_t, B, C, D, delta_bias, z, checkpoints = ctx.saved_tensors
        batch, length, d_inner = u.shape
        d_state = A_t.shape[0]
        dtype = u.dtype
        work = batch * length * d_inner * d_state
        block = _backward_block_width(d_state, d_inner)
        with _threads_for(work):
            n_groups = _backward_group_count(batch, -(-d_inner // block))

        grad_y = grad_y.to(dtype) if grad_y is not None else u.new_zeros(batch, length, d_inner)
        grad_final = grad_final.to(dtype) if grad_final is not None else u.new_zeros(batch, d_inner, d_state)
        grad_u = torch.empty_like(u)
        grad_delta = torch.empty_like(u)
        grad_z = torch.empty_like(u) if ctx.has_z else u.new_zeros(0, 0, 0)
        grad_A_parts = torch.empty(batch, d_inner, d_state, dtype=dtype)
        grad_B_parts = torch.zeros(n_groups, batch, length, d_state, dtype=dtype)
        grad_C_parts = torch.zeros(n_groups, batch, length, d_state, dtype=dtype)
        grad_D_parts = torch.empty(batch, d_inner, dtype=dtype)
        grad_bias_parts = torch.empty(batch, d_inner, dtype=dtype)
        grad_initial = torch.empty(batch, d_inner, d_state, dtype=dtype)

        with _threads_for(work):
            _scan_backward_kernel(
                _as_array(u), _as_array(delta), _as_array(A_t), _as_array(B), _as_array(C),
                _as_array(D), _as_array(delta_bias), _as_array(z), ctx.has_z, ctx.delta_softplus,
                _as_array(checkpoints), ctx.interval, block, n_groups,
                _as_array(grad_y), _as_array(grad_final),
                grad_u.numpy(), grad_delta.numpy(), grad_z.numpy(), grad_A_parts.numpy(),
                grad_B_parts.numpy(), grad_C_parts.numpy(), grad_D_parts.numpy(),
                grad_bias_parts.numpy(), grad_initial.numpy(),
            )  # fmt: skip

        needs = ctx.needs_input_grad
        return (
            grad_u if needs[0] else None,
            grad_delta if needs[1] else None,
            grad_A_parts.sum(0) if needs[2] else None,
            grad_B_parts.sum(0) if needs[3] else None,
            grad_C_parts.sum(0) if needs[4] else None,
            grad_D_parts.sum(0) if needs[5] else None,
            grad_z if needs[6] else None,
            grad_bias_parts.sum(0) if needs[7] else None,
            grad_initial if needs[8] else None,
            None,
        )


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _check_cpu(**tensors: torch.Tensor | None) -> None:
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device.type != "cpu":
            raise ValueError(f"{name} is on {tensor.device}, but the numba kernels need CPU tensors; move it with .cpu()")


def selective_scan_cpu(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """Run the selective scan with the fused numba kernels, differentiable in every tensor.

    Arguments and returns are those of ``selective_scan_reference``: u, delta, z: (b, l, d);
    A: (d, n); B, C: (b, l, n); D, delta_bias: (d,); initial_state: (b, d, n). y has the dtype of
    ``u``. The final state (b, d, n) is fp32, or fp64 when ``u`` is fp64 because the scan then
    runs in fp64.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    _check_cpu(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
    dtype = _compute_dtype(u)

    # Casts and copies outside the autograd Function, so autograd maps the gradients back to the
    # caller's dtypes and strides. They are no-ops for contiguous inputs of the compute dtype.
    def prepare(tensor):
        return None if tensor is None else tensor.to(dtype).contiguous()

    y, final_state = _SelectiveScanFunction.apply(
        prepare(u), prepare(delta), prepare(A), prepare(B), prepare(C), prepare(D), prepare(z),
        prepare(delta_bias), prepare(initial_state), bool(delta_softplus),
    )  # fmt: skip
    y = y.to(u.dtype)
    if return_final_state:
        return y, final_state
    return y


def selective_state_update_cpu(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """Advance the scan by one token, updating ``state`` in place. Not differentiable.

    Args and returns are those of ``selective_state_update_reference``: state (b, d, n),
    x, dt, z: (b, d), A: (d, n), B, C: (b, n), D, dt_bias: (d,). Returns y (b, d) with the dtype
    of ``x``. The update runs in fp64 when ``state`` is fp64, in fp32 otherwise.
    """
    _check_update_shapes(state, x, dt, A, B, C, D, z, dt_bias)
    batch, d_inner, d_state = state.shape
    _check_cpu(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)

    dtype = _compute_dtype(state)
    # The kernel writes through a contiguous array of the compute dtype. A state of another
    # dtype or layout is updated in a copy, which is written back at the end.
    work = state if state.dtype == dtype and state.is_contiguous() else state.to(dtype).contiguous()

    state_array = work.detach().numpy()

    def as_array(tensor, shape_if_none=None):
        if tensor is None:
            return np.zeros(shape_if_none, dtype=state_array.dtype)
        # A copy, never a view: a numpy view of a parameter (D, dt_bias) would make its storage
        # non-resizable, which breaks FSDP's freeing of gathered parameters.
        return tensor.detach().to(dtype).numpy().copy()

    y = torch.empty(batch, d_inner, dtype=dtype)
    with _threads_for(batch * d_inner * d_state):
        _state_update_kernel(
            state_array, as_array(x), as_array(dt), as_array(A), as_array(B), as_array(C),
            as_array(D, (d_inner,)), as_array(dt_bias, (d_inner,)), as_array(z, (0, 0)), z is not None,
            bool(dt_softplus), UPDATE_BLOCK, y.numpy(),
        )  # fmt: skip
    if work is not state:
        with torch.no_grad():
            state.copy_(work)
    return y.to(x.dtype)


# --- availability -----------------------------------------------------------------------------

def available() -> bool:
    """Return whether the kernels can run here, compiling (or loading from cache) a tiny scan once.

    Setting ``MAMBAKIT_DISABLE_NUMBA=1`` makes this return False, to force the reference.
    """
    return _PROBE.available()


def unavailable_reason() -> str | None:
    """Return why ``available()`` is False, or None when it is True or was never called."""
    return _PROBE.unavailable_reason()


def _run_probe() -> None:
    """Run the fp32 forward kernel on a tiny scan and compare it with the reference scan.

    NOTE: the backward and decode kernels compile on their first call, outside this probe.
    """
    generator = torch.Generator().manual_seed(0)
    u, delta = torch.randn(2, 1, 3, 2, generator=generator)
    A = -torch.rand(2, 2, generator=generator)
    B, C = torch.randn(2, 1, 3, 2, generator=generator)
    with torch.no_grad():
        y = selective_scan_cpu(u, delta, A, B, C, delta_softplus=True)
        expected = selective_scan_reference(u, delta, A, B, C, delta_softplus=True)
    if not torch.allclose(y, expected, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"probe scan returned {y.flatten().tolist()}, expected {expected.flatten().tolist()}")


_PROBE = KernelProbe("scan", _run_probe)
