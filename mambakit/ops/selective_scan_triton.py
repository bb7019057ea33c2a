"""Triton kernels for the selective scan, its backward pass, the one-token decode and the causal conv.

Shape letters used in this module:

    b   batch
    l   sequence length
    d   channels of the scan (the mixer's ``d_inner``)
    n   state size per channel (``d_state``)
    k   convolution width (``d_conv``)

Scan kernels run one program per (batch row, block of ``BLOCK_D`` channels). A program keeps the
(BLOCK_D, BLOCK_N) state of its channels in registers and walks the sequence one step at a time,
so the (b, l, d, n) tensor of all states is never written. The forward kernel fuses the bias, the
softplus, the ``exp(dt * A)`` discretization, the recurrence, the ``D`` skip and the ``silu(z)``
gate. Inputs may be fp32, fp16 or bf16 (fp64 is accepted and rounded to fp32). The state and every
sum are fp32, and ``y`` is stored in the dtype of ``u``.

The backward pass needs the state before each step, in reverse order. When autograd is recording,
the forward kernel stores the state at the start of every chunk of ``CHECKPOINT_INTERVAL`` steps.
For each chunk, last chunk first, the backward kernel rebuilds the chunk's states from its
checkpoint into a per-program scratch buffer and then walks the chunk backward. Memory is
``l / CHECKPOINT_INTERVAL`` states per channel for the checkpoints plus ``CHECKPOINT_INTERVAL``
states per channel for the scratch, instead of ``l`` states per channel.

Gradients of A, D and delta_bias are summed over the batch, and those of B and C over the
channels. Each program writes its own slice of a partial-sum buffer, and a torch ``sum`` adds the
slices. This costs memory, (d / BLOCK_D) * b * l * n floats each for B and C, but no two programs
write the same address, so the gradients are deterministic. Float atomics would save that memory
but give run-to-run differences.

The causal convolution has Triton forward kernels only. Its backward pass recomputes the
convolution with the PyTorch ops of ``mambakit.ops.causal_conv`` and differentiates those.

On a machine without a GPU, triton's interpreter runs the kernels on CPU tensors (slowly), which
is how the tests run. ``TRITON_INTERPRET=1`` turns it on, but only if it is set before triton is
first imported in the process. ``@triton.jit`` chooses between the interpreter and the compiler
when it decorates a function, and ``triton.language`` decorates its own functions (``tl.sum``,
``tl.sigmoid``) when it is imported.
"""

from __future__ import annotations

import os

import torch

from mambakit.ops.causal_conv import causal_conv1d
from mambakit.ops.selective_scan import _check_shapes, _check_update_shapes, selective_scan_reference

try:
    import triton
    import triton.language as tl
except ImportError as error:  # the kernels below are defined but never launched without triton
    triton = None
    tl = None
    _IMPORT_ERROR: str | None = f"triton is not installed ({error}); install it with `pip install triton`"
else:
    _IMPORT_ERROR = None


def _interpreter_enabled() -> bool:
    """Return whether ``@triton.jit`` would build interpreted functions now (``TRITON_INTERPRET=1``)."""
    if triton is None:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"  # older triton releases have no knobs


def _language_interpreted() -> bool:
    """Return whether ``triton.language`` was imported with the interpreter on.

    Its functions are ``JITFunction`` objects when it was imported without the interpreter, and
    interpreted kernels cannot call those. Other types (``InterpretedFunction`` in triton 3.9, or
    a plain function in a release that does not decorate ``tl.sum``) are taken as interpreted.
    """
    return tl is not None and type(getattr(tl, "sum", None)).__name__ != "JITFunction"


def _jit(function):
    return function if triton is None else triton.jit(function)


# Whether the kernels of this module run under the interpreter. ``@triton.jit`` chooses when this
# module is imported, so setting TRITON_INTERPRET later has no effect on these kernels.
_INTERPRETED_KERNELS = _interpreter_enabled() and _language_interpreted()

# Steps between two stored states. A longer interval means fewer checkpoints, ceil(l / interval)
# states per channel, but a larger scratch buffer, interval states per channel. Near sqrt(l) the
# two are equal. NOTE: 32 is a guess for l around 1000 to 4000 and was not tuned on a GPU.
CHECKPOINT_INTERVAL = 32

# Maximum state entries, BLOCK_D * BLOCK_N, that one scan program keeps in registers. With four
# warps, 512 fp32 entries are 4 registers per thread for each (BLOCK_D, BLOCK_N) value. The
# backward kernel keeps about six such values, the forward kernel two.
SCAN_TILE_ELEMENTS = 512

# Maximum channels per scan program. Fewer channels per program means more programs, which a
# batch of 1 needs to fill the GPU's streaming multiprocessors.
MAX_SCAN_BLOCK_D = 64

# Channels per program of the convolution kernels, and time steps per program of the forward one.
CONV_BLOCK_D = 64
CONV_BLOCK_L = 64

NUM_WARPS = 4

# softplus(x) returns x above this, as torch.nn.functional.softplus does with its default threshold.
SOFTPLUS_THRESHOLD = 20.0


# --- device helpers -------------------------------------------------------------------------


@_jit
def _softplus(x):
    """Return log(1 + exp(x)), or x itself above 20, in fp32."""
    # softplus(x) = max(x, 0) + log1p(exp(-|x|)). log1p(e) is computed as log(w) * e / (w - 1)
    # with w = 1 + e, which stays accurate when e is tiny and 1 + e rounds to 1.
    e = tl.exp(-tl.abs(x))
    w = 1.0 + e
    denominator = tl.where(w == 1.0, 1.0, w - 1.0)
    log1p_e = tl.where(w == 1.0, e, tl.log(w) * e / denominator)
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + log1p_e)


@_jit
def _softplus_grad(x):
    """Return the derivative of ``_softplus`` at x: sigmoid(x), or 1 above 20."""
    return tl.where(x > 20.0, 1.0, tl.sigmoid(x))


# --- selective scan kernels -----------------------------------------------------------------


@_jit
def _scan_forward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, initial_ptr,
    y_ptr, final_ptr, checkpoint_ptr,
    length, d_inner, d_state, n_chunks,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INITIAL: tl.constexpr,
    SOFTPLUS: tl.constexpr, STORE_CHECKPOINTS: tl.constexpr,
):  # fmt: skip
    """Scan the channels ``pid_d * BLOCK_D ...`` of batch row ``pid_b``.

    u, delta, z, y: (b, l, d). A: (d, n). B, C: (b, l, n). D, bias: (d,).
    initial, final: (b, d, n), final in fp32. checkpoint: (b, n_chunks, d, n) fp32, written only
    if STORE_CHECKPOINTS, with the state before steps 0, CHUNK, 2 * CHUNK, ...
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    channels = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    states = tl.arange(0, BLOCK_N)
    channel_mask = channels < d_inner
    state_mask = states < d_state
    tile_mask = channel_mask[:, None] & state_mask[None, :]
    tile_offsets = channels[:, None] * d_state + states[None, :]

    # Padded rows and columns load zeros, so they keep a zero state and add nothing to the sums.
    A = tl.load(A_ptr + tile_offsets, mask=tile_mask, other=0.0).to(tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32)
    state_base = pid_b * d_inner * d_state
    if HAS_INITIAL:
        h = tl.load(initial_ptr + state_base + tile_offsets, mask=tile_mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)

    for chunk in range(n_chunks):
        if STORE_CHECKPOINTS:
            checkpoint_base = (pid_b * n_chunks + chunk) * d_inner * d_state
            tl.store(checkpoint_ptr + checkpoint_base + tile_offsets, h, mask=tile_mask)
        t_start = chunk * CHUNK
        t_end = tl.minimum(t_start + CHUNK, length)
        for t in range(t_start, t_end):
            row = pid_b * length + t
            u = tl.load(u_ptr + row * d_inner + channels, mask=channel_mask, other=0.0).to(tl.float32)
            dt = tl.load(delta_ptr + row * d_inner + channels, mask=channel_mask, other=0.0).to(tl.float32)
            B = tl.load(B_ptr + row * d_state + states, mask=state_mask, other=0.0).to(tl.float32)
            C = tl.load(C_ptr + row * d_state + states, mask=state_mask, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = _softplus(dt)

            decay = tl.exp(dt[:, None] * A)
            h = decay * h + (dt * u)[:, None] * B[None, :]
            out = tl.sum(h * C[None, :], axis=1)

            if HAS_D:
                out = out + D * u
            if HAS_Z:
                z = tl.load(z_ptr + row * d_inner + channels, mask=channel_mask, other=0.0).to(tl.float32)
                out = out * z * tl.sigmoid(z)
            tl.store(y_ptr + row * d_inner + channels, out.to(y_ptr.dtype.element_ty), mask=channel_mask)

    tl.store(final_ptr + state_base + tile_offsets, h, mask=tile_mask)


@_jit
def _scan_backward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, checkpoint_ptr, scratch_ptr,
    grad_y_ptr, grad_final_ptr,
    grad_u_ptr, grad_delta_ptr, grad_z_ptr, grad_initial_ptr,
    grad_A_parts_ptr, grad_B_parts_ptr, grad_C_parts_ptr, grad_D_parts_ptr, grad_bias_parts_ptr,
    batch, length, d_inner, d_state, n_chunks,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):  # fmt: skip
    """Write the gradients of the channels ``pid_d * BLOCK_D ...`` of batch row ``pid_b``.

    Inputs are those of ``_scan_forward_kernel``, with checkpoint: (b, n_chunks, d, n) fp32,
    grad_y: (b, l, d) and grad_final: (b, d, n) fp32. scratch: (b * d_blocks, CHUNK, BLOCK_D,
    BLOCK_N) fp32, one slice per program.
    Writes, in fp32: grad_u, grad_delta and grad_z (b, l, d), the last only if HAS_Z.
    grad_initial and grad_A_parts (b, d, n). grad_D_parts and grad_bias_parts (b, d).
    grad_B_parts and grad_C_parts (d_blocks, b, l, n). The caller sums each ``*_parts`` tensor
    over its first dimension.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    n_blocks = tl.num_programs(1)
    channels = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    states = tl.arange(0, BLOCK_N)
    channel_mask = channels < d_inner
    state_mask = states < d_state
    tile_mask = channel_mask[:, None] & state_mask[None, :]
    tile_offsets = channels[:, None] * d_state + states[None, :]
    scratch_offsets = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + states[None, :]
    scratch_base = (pid_b * n_blocks + pid_d) * CHUNK * BLOCK_D * BLOCK_N
    # Row of this program in the (d_blocks, b, l, n) partial sums of the B and C gradients.
    parts_base = (pid_d * batch + pid_b) * length * d_state

    A = tl.load(A_ptr + tile_offsets, mask=tile_mask, other=0.0).to(tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32)
    state_base = pid_b * d_inner * d_state

    # grad_h is dLoss/dh after the step being processed. It starts as the final state's gradient.
    grad_h = tl.load(grad_final_ptr + state_base + tile_offsets, mask=tile_mask, other=0.0).to(tl.float32)
    grad_A = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    grad_D = tl.zeros([BLOCK_D], dtype=tl.float32)
    grad_bias = tl.zeros([BLOCK_D], dtype=tl.float32)

    for chunk_from_end in range(n_chunks):
        chunk = n_chunks - 1 - chunk_from_end
        t_start = chunk * CHUNK
        steps = tl.minimum(CHUNK, length - t_start)

        # Rebuild the states of this chunk from its checkpoint. Slot i of the scratch receives the
        # state before step t_start + i.
        checkpoint_base = (pid_b * n_chunks + chunk) * d_inner * d_state
        h = tl.load(checkpoint_ptr + checkpoint_base + tile_offsets, mask=tile_mask, other=0.0)
        for i in range(steps):
            tl.store(scratch_ptr + scratch_base + i * BLOCK_D * BLOCK_N + scratch_offsets, h)
            row = pid_b * length + t_start + i
            u = tl.load(u_ptr + row * d_inner + channels, mask=channel_mask, other=0.0).to(tl.float32)
            dt = tl.load(delta_ptr + row * d_inner + channels, mask=channel_mask, other=0.0).to(tl.float32)
            B = tl.load(B_ptr + row * d_state + states, mask=state_mask, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * B[None, :]

        # A thread may read back a scratch entry that another thread of the program stored (the
        # layout can replicate small tiles), so every store must land before the reads start.
        tl.debug_barrier()

        # Walk the chunk backward. On entry to step t, grad_h is dLoss/dh_t, the gradient of the
        # state after step t. On exit it is dLoss/dh_(t-1).
        for i_from_end in range(steps):
            i = steps - 1 - i_from_end
            t = t_start + i
            row = pid_b * length + t
            h_before = tl.load(scratch_ptr + scratch_base + i * BLOCK_D * BLOCK_N + scratch_offsets)
            u = tl.load(u_ptr + row * d_inner + channels, mask=channel_mask, other=0.0).to(tl.float32)
            dt_raw = tl.load(delta_ptr + row * d_inner + channels, mask=channel_mask, other=0.0).to(tl.float32)
            B = tl.load(B_ptr + row * d_state + states, mask=state_mask, other=0.0).to(tl.float32)
            C = tl.load(C_ptr + row * d_state + states, mask=state_mask, other=0.0).to(tl.float32)
            grad_out = tl.load(grad_y_ptr + row * d_inner + channels, mask=channel_mask, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt_raw = dt_raw + bias
            if SOFTPLUS:
                dt = _softplus(dt_raw)
            else:
                dt = dt_raw

            # Recompute this step's state and, for the gate, its output before the gate.
            decay = tl.exp(dt[:, None] * A)
            h = decay * h_before + (dt * u)[:, None] * B[None, :]
            if HAS_Z:
                z = tl.load(z_ptr + row * d_inner + channels, mask=channel_mask, other=0.0).to(tl.float32)
                out = tl.sum(h * C[None, :], axis=1)
                if HAS_D:
                    out = out + D * u
                sigmoid_z = tl.sigmoid(z)
                # d silu(z) / dz = sigmoid(z) * (1 + z * (1 - sigmoid(z)))
                grad_z = grad_out * out * sigmoid_z * (1.0 + z * (1.0 - sigmoid_z))
                tl.store(grad_z_ptr + row * d_inner + channels, grad_z, mask=channel_mask)
                grad_out = grad_out * z * sigmoid_z

            # y_t = <C_t, h_t> + D u_t: gradients of C_t, D and the skip path of u_t.
            grad_h = grad_h + grad_out[:, None] * C[None, :]
            grad_C = tl.sum(grad_out[:, None] * h, axis=0)
            tl.store(grad_C_parts_ptr + parts_base + t * d_state + states, grad_C, mask=state_mask)
            if HAS_D:
                grad_D += grad_out * u
                grad_u = grad_out * D
            else:
                grad_u = tl.zeros([BLOCK_D], dtype=tl.float32)

            # h_t = exp(dt A) h_(t-1) + (dt u) B_t: gradients of B_t, of dt u, of dt A.
            dt_u = dt * u
            grad_B = tl.sum(grad_h * dt_u[:, None], axis=0)
            tl.store(grad_B_parts_ptr + parts_base + t * d_state + states, grad_B, mask=state_mask)
            grad_dt_u = tl.sum(grad_h * B[None, :], axis=1)
            grad_dt_A = grad_h * h_before * decay
            grad_A += grad_dt_A * dt[:, None]

            grad_dt = tl.sum(grad_dt_A * A, axis=1) + grad_dt_u * u
            grad_u = grad_u + grad_dt_u * dt
            if SOFTPLUS:
                grad_dt = grad_dt * _softplus_grad(dt_raw)
            grad_bias += grad_dt
            tl.store(grad_u_ptr + row * d_inner + channels, grad_u, mask=channel_mask)
            tl.store(grad_delta_ptr + row * d_inner + channels, grad_dt, mask=channel_mask)

            grad_h = grad_h * decay

        # The next chunk overwrites the scratch, so every read of this chunk must finish first.
        tl.debug_barrier()

    tl.store(grad_initial_ptr + state_base + tile_offsets, grad_h, mask=tile_mask)
    tl.store(grad_A_parts_ptr + state_base + tile_offsets, grad_A, mask=tile_mask)
    tl.store(grad_D_parts_ptr + pid_b * d_inner + channels, grad_D, mask=channel_mask)
    tl.store(grad_bias_parts_ptr + pid_b * d_inner + channels, grad_bias, mask=channel_mask)


@_jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    d_inner, d_state, stride_state_b, stride_state_d, stride_state_n,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):  # fmt: skip
    """Advance the state of the channels ``pid_d * BLOCK_D ...`` of batch row ``pid_b`` by one token.

    state: (b, d, n) with the given strides, updated in place. x, dt, z, y: (b, d). A: (d, n).
    B, C: (b, n). D, bias: (d,).
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    channels = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    states = tl.arange(0, BLOCK_N)
    channel_mask = channels < d_inner
    state_mask = states < d_state
    tile_mask = channel_mask[:, None] & state_mask[None, :]
    state_pointers = (
        state_ptr + pid_b * stride_state_b + channels[:, None] * stride_state_d + states[None, :] * stride_state_n
    )

    h = tl.load(state_pointers, mask=tile_mask, other=0.0).to(tl.float32)
    A = tl.load(A_ptr + channels[:, None] * d_state + states[None, :], mask=tile_mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + pid_b * d_inner + channels, mask=channel_mask, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * d_inner + channels, mask=channel_mask, other=0.0).to(tl.float32)
    B = tl.load(B_ptr + pid_b * d_state + states, mask=state_mask, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + pid_b * d_state + states, mask=state_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt = dt + tl.load(bias_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)

    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * B[None, :]
    out = tl.sum(h * C[None, :], axis=1)
    if HAS_D:
        out = out + tl.load(D_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * d_inner + channels, mask=channel_mask, other=0.0).to(tl.float32)
        out = out * z * tl.sigmoid(z)

    # The state is updated in place: every thread must have read it before any thread overwrites it.
    tl.debug_barrier()
    tl.store(state_pointers, h.to(state_ptr.dtype.element_ty), mask=tile_mask)
    tl.store(y_ptr + pid_b * d_inner + channels, out.to(y_ptr.dtype.element_ty), mask=channel_mask)


# --- causal convolution kernels -------------------------------------------------------------


@_jit
def _conv_forward_kernel(
    x_ptr, weight_ptr, bias_ptr, window_ptr, out_ptr,
    d_inner, length,
    stride_x_b, stride_x_d, stride_x_l, stride_out_b, stride_out_d, stride_out_l,
    WIDTH: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_WINDOW: tl.constexpr, ACTIVATION: tl.constexpr,
):  # fmt: skip
    """Convolve a (BLOCK_D, BLOCK_L) tile of batch row ``pid_b`` causally.

    x, out: (b, d, l) with the given strides. weight: (d, k) contiguous. bias: (d,).
    window: (b, d, k) contiguous, the last k inputs before x, of which the newest k - 1 are used.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    pid_l = tl.program_id(2)
    channels = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    times = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    channel_mask = channels < d_inner
    time_mask = times < length

    acc = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
    for j in tl.static_range(WIDTH):
        # Tap j multiplies the input WIDTH - 1 - j steps before the output's step. Inputs before
        # step 0 come from the window, at index source + WIDTH, or are zero without a window.
        source = times + j - (WIDTH - 1)
        weight = tl.load(weight_ptr + channels * WIDTH + j, mask=channel_mask, other=0.0).to(tl.float32)
        in_x = channel_mask[:, None] & (source >= 0)[None, :] & time_mask[None, :]
        x_pointers = x_ptr + pid_b * stride_x_b + channels[:, None] * stride_x_d + source[None, :] * stride_x_l
        values = tl.load(x_pointers, mask=in_x, other=0.0).to(tl.float32)
        if HAS_WINDOW:
            in_window = channel_mask[:, None] & (source < 0)[None, :] & time_mask[None, :]
            window_pointers = window_ptr + (pid_b * d_inner + channels[:, None]) * WIDTH + (source + WIDTH)[None, :]
            values += tl.load(window_pointers, mask=in_window, other=0.0).to(tl.float32)
        acc += weight[:, None] * values

    if HAS_BIAS:
        acc += tl.load(bias_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32)[:, None]
    if ACTIVATION:
        acc = acc * tl.sigmoid(acc)
    out_pointers = out_ptr + pid_b * stride_out_b + channels[:, None] * stride_out_d + times[None, :] * stride_out_l
    tl.store(out_pointers, acc.to(out_ptr.dtype.element_ty), mask=channel_mask[:, None] & time_mask[None, :])


@_jit
def _conv_update_kernel(
    x_ptr, window_ptr, weight_ptr, bias_ptr, out_ptr,
    d_inner, stride_window_b, stride_window_d, stride_window_k,
    WIDTH: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
):  # fmt: skip
    """Shift x into the window of the channels ``pid_d * BLOCK_D ...`` and convolve one step.

    x, out: (b, d) contiguous. window: (b, d, k) with the given strides, updated in place.
    weight: (d, k) contiguous. bias: (d,).
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    channels = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    taps = tl.arange(0, BLOCK_K)
    channel_mask = channels < d_inner
    tile_mask = channel_mask[:, None] & (taps < WIDTH)[None, :]
    row_pointers = window_ptr + pid_b * stride_window_b + channels[:, None] * stride_window_d

    # The new window is the old one shifted left by one, with x in the last slot.
    shifted_mask = channel_mask[:, None] & (taps + 1 < WIDTH)[None, :]
    shifted = tl.load(row_pointers + (taps + 1)[None, :] * stride_window_k, mask=shifted_mask, other=0.0)
    x = tl.load(x_ptr + pid_b * d_inner + channels, mask=channel_mask, other=0.0)
    window = tl.where((taps == WIDTH - 1)[None, :], x.to(shifted.dtype)[:, None], shifted)

    weight = tl.load(weight_ptr + channels[:, None] * WIDTH + taps[None, :], mask=tile_mask, other=0.0)
    out = tl.sum(window.to(tl.float32) * weight.to(tl.float32), axis=1)
    if HAS_BIAS:
        out += tl.load(bias_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32)
    if ACTIVATION:
        out = out * tl.sigmoid(out)

    # Slot j is written here and read above as slot j + 1, possibly by another thread, so every
    # read must finish before the first write.
    tl.debug_barrier()
    tl.store(row_pointers + taps[None, :] * stride_window_k, window, mask=tile_mask)
    tl.store(out_ptr + pid_b * d_inner + channels, out.to(out_ptr.dtype.element_ty), mask=channel_mask)


# --- launch helpers -------------------------------------------------------------------------


def _state_block(d_state: int) -> int:
    """Return BLOCK_N, the padded state size: a power of two, at least 2."""
    return max(2, triton.next_power_of_2(d_state))


def _scan_channel_block(d_inner: int, block_n: int) -> int:
    """Return BLOCK_D, the channels per scan program, a power of two of at least 2.

    The (BLOCK_D, BLOCK_N) tile stays within ``SCAN_TILE_ELEMENTS``, BLOCK_D stays at most
    ``MAX_SCAN_BLOCK_D``, and it is no wider than d_inner needs.
    """
    block = max(1, min(MAX_SCAN_BLOCK_D, SCAN_TILE_ELEMENTS // block_n))
    block = 1 << (block.bit_length() - 1)  # round down to a power of two
    return max(2, min(block, triton.next_power_of_2(d_inner)))


class _SelectiveScanTritonFunction(torch.autograd.Function):
    """Autograd wrapper around the scan kernels, for contiguous inputs of any float dtype."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
        batch, length, d_inner = u.shape
        d_state = A.shape[1]
        block_n = _state_block(d_state)
        block_d = _scan_channel_block(d_inner, block_n)
        chunk = CHECKPOINT_INTERVAL
        n_chunks = triton.cdiv(length, chunk)

        # Checkpoints only when a backward pass can follow. Otherwise an empty (b, 0, d, n) tensor
        # is passed, because the kernel takes a pointer either way.
        store_checkpoints = any(ctx.needs_input_grad)
        checkpoints = u.new_empty(batch, n_chunks if store_checkpoints else 0, d_inner, d_state, dtype=torch.float32)
        y = torch.empty_like(u)
        final_state = u.new_empty(batch, d_inner, d_state, dtype=torch.float32)

        grid = (batch, triton.cdiv(d_inner, block_d))
        _scan_forward_kernel[grid](
            u, delta, A, B, C, _or_dummy(D, u), _or_dummy(z, u), _or_dummy(delta_bias, u),
            _or_dummy(initial_state, u), y, final_state, checkpoints,
            length, d_inner, d_state, n_chunks,
            CHUNK=chunk, BLOCK_D=block_d, BLOCK_N=block_n,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            HAS_INITIAL=initial_state is not None, SOFTPLUS=bool(delta_softplus),
            STORE_CHECKPOINTS=store_checkpoints, num_warps=NUM_WARPS,
        )  # fmt: skip

        ctx.delta_softplus = bool(delta_softplus)
        ctx.chunk = chunk
        ctx.block_sizes = (block_d, block_n)
        ctx.initial_dtype = None if initial_state is None else initial_state.dtype
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, checkpoints)
        return y, final_state

    @staticmethod
    def backward(ctx, grad_y, grad_final):
        u, delta, A, B, C, D, z, delta_bias, checkpoints = ctx.saved_tensors
        batch, length, d_inner = u.shape
        d_state = A.shape[1]
        block_d, block_n = ctx.block_sizes
        chunk = ctx.chunk
        n_chunks = checkpoints.shape[1]
        n_blocks = triton.cdiv(d_inner, block_d)

        def fp32(shape):
            return u.new_empty(shape, dtype=torch.float32)

        grad_y = u.new_zeros(u.shape) if grad_y is None else grad_y.contiguous()
        grad_final = fp32((batch, d_inner, d_state)).zero_() if grad_final is None else grad_final.contiguous()
        grad_u = fp32(u.shape)
        grad_delta = fp32(u.shape)
        grad_z = fp32(u.shape) if z is not None else fp32((0,))
        grad_initial = fp32((batch, d_inner, d_state))
        grad_A_parts = fp32((batch, d_inner, d_state))
        grad_B_parts = fp32((n_blocks, batch, length, d_state))
        grad_C_parts = fp32((n_blocks, batch, length, d_state))
        grad_D_parts = fp32((batch, d_inner))
        grad_bias_parts = fp32((batch, d_inner))
        scratch = fp32((batch * n_blocks, chunk, block_d, block_n))

        _scan_backward_kernel[(batch, n_blocks)](
            u, delta, A, B, C, _or_dummy(D, u), _or_dummy(z, u), _or_dummy(delta_bias, u),
            checkpoints, scratch, grad_y, grad_final,
            grad_u, grad_delta, grad_z, grad_initial,
            grad_A_parts, grad_B_parts, grad_C_parts, grad_D_parts, grad_bias_parts,
            batch, length, d_inner, d_state, n_chunks,
            CHUNK=chunk, BLOCK_D=block_d, BLOCK_N=block_n,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=ctx.delta_softplus, num_warps=NUM_WARPS,
        )  # fmt: skip

        needs = ctx.needs_input_grad
        return (
            grad_u.to(u.dtype) if needs[0] else None,
            grad_delta.to(delta.dtype) if needs[1] else None,
            grad_A_parts.sum(0).to(A.dtype) if needs[2] else None,
            grad_B_parts.sum(0).to(B.dtype) if needs[3] else None,
            grad_C_parts.sum(0).to(C.dtype) if needs[4] else None,
            grad_D_parts.sum(0).to(D.dtype) if needs[5] else None,
            grad_z.to(z.dtype) if needs[6] else None,
            grad_bias_parts.sum(0).to(delta_bias.dtype) if needs[7] else None,
            grad_initial.to(ctx.initial_dtype) if needs[8] else None,
            None,
        )


def _or_dummy(tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Return ``tensor``, or ``like`` in place of None. Kernels never read it, because a flag is off."""
    return like if tensor is None else tensor


def _check_device(first_name: str, first: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    """Raise ValueError unless the kernels can run on the device of ``first`` and every tensor is on it."""
    device = first.device
    reason = unavailable_reason(device)
    if reason is not None:
        raise ValueError(f"the Triton kernels cannot run on {device}: {reason}")
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != device:
            raise ValueError(
                f"{name} is on {tensor.device} but {first_name} is on {device}; move all tensors to one device"
            )


def selective_scan_triton(
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
    """Run the selective scan with the Triton kernels, differentiable in every tensor.

    Arguments and returns are those of ``selective_scan_reference``: u, delta, z: (b, l, d);
    A: (d, n); B, C: (b, l, n); D, delta_bias: (d,); initial_state: (b, d, n). Returns y
    (b, l, d) in the dtype of ``u`` and, if ``return_final_state``, the final state (b, d, n) in
    fp32. Gradients come back in the dtype of each input.

    Raises:
        ValueError: on shapes that do not match, on tensors on different devices, or when the
            kernels cannot run on the device of ``u`` (see ``unavailable_reason``).
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    _check_device(
        "u", u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state
    )
    batch, _, d_inner = u.shape
    d_state = A.shape[1]

    if batch == 0 or d_inner == 0 or d_state == 0:
        # A grid with no programs cannot be launched. These scans have no state to carry, so the
        # reference computes them in a few tensor ops.
        return selective_scan_reference(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
            initial_state=initial_state, return_final_state=return_final_state,
        )  # fmt: skip

    # Copies outside the autograd Function, so that autograd maps the gradients back to the
    # caller's strides. They are no-ops for contiguous inputs.
    def prepare(tensor):
        return None if tensor is None else tensor.contiguous()

    y, final_state = _SelectiveScanTritonFunction.apply(
        prepare(u), prepare(delta), prepare(A), prepare(B), prepare(C), prepare(D), prepare(z),
        prepare(delta_bias), prepare(initial_state), bool(delta_softplus),
    )  # fmt: skip
    if return_final_state:
        return y, final_state
    return y


def selective_state_update_triton(
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
    """Advance the scan by one token with a Triton kernel, updating ``state`` in place.

    Arguments and returns are those of ``selective_state_update_reference``: state (b, d, n) of
    any float dtype and any strides (a view into a cache works), x, dt, z: (b, d), A: (d, n),
    B, C: (b, n), D, dt_bias: (d,). Returns y (b, d) in the dtype of ``x``. The update runs in
    fp32 and is rounded to the dtype of ``state`` when stored. Not differentiable.
    """
    _check_update_shapes(state, x, dt, A, B, C, D, z, dt_bias)
    batch, d_inner, d_state = state.shape
    _check_device("state", state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)

    y = x.new_empty(batch, d_inner)
    if batch == 0 or d_inner == 0:
        return y

    def prepare(tensor):
        return None if tensor is None else tensor.detach().contiguous()

    block_n = _state_block(d_state)
    block_d = _scan_channel_block(d_inner, block_n)
    grid = (batch, triton.cdiv(d_inner, block_d))
    x_c, dt_c, A_c, B_c, C_c = (prepare(t) for t in (x, dt, A, B, C))
    with torch.no_grad():
        _state_update_kernel[grid](
            state, x_c, dt_c, A_c, B_c, C_c, _or_dummy(prepare(D), x_c), _or_dummy(prepare(z), x_c),
            _or_dummy(prepare(dt_bias), x_c), y,
            d_inner, d_state, state.stride(0), state.stride(1), state.stride(2),
            BLOCK_D=block_d, BLOCK_N=block_n,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
            SOFTPLUS=bool(dt_softplus), num_warps=NUM_WARPS,
        )  # fmt: skip
    return y


class _CausalConvTritonFunction(torch.autograd.Function):
    """Triton forward of ``causal_conv1d``, whose backward differentiates the PyTorch version."""

    @staticmethod
    def forward(ctx, x, weight, bias, window, activation):
        batch, d_inner, length = x.shape
        width = weight.shape[1]
        out = torch.empty_like(x)  # keeps the strides of x, so a transposed view stays one
        grid = (batch, triton.cdiv(d_inner, CONV_BLOCK_D), triton.cdiv(length, CONV_BLOCK_L))
        _conv_forward_kernel[grid](
            x, weight, _or_dummy(bias, weight), _or_dummy(window, weight), out,
            d_inner, length,
            x.stride(0), x.stride(1), x.stride(2), out.stride(0), out.stride(1), out.stride(2),
            WIDTH=width, BLOCK_D=CONV_BLOCK_D, BLOCK_L=CONV_BLOCK_L,
            HAS_BIAS=bias is not None, HAS_WINDOW=window is not None, ACTIVATION=bool(activation),
            num_warps=NUM_WARPS,
        )  # fmt: skip
        ctx.activation = bool(activation)
        ctx.save_for_backward(x, weight, bias, window)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, window = ctx.saved_tensors
        inputs = [tensor.detach().requires_grad_(need) if tensor is not None else None
                  for tensor, need in zip((x, weight, bias, window), ctx.needs_input_grad)]  # fmt: skip
        with torch.enable_grad():
            out = causal_conv1d(*inputs, activation=ctx.activation)
            wanted = [tensor for tensor in inputs if tensor is not None and tensor.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad_out))
        return tuple(
            next(grads) if tensor is not None and tensor.requires_grad else None for tensor in inputs
        ) + (None,)


def causal_conv1d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    window: torch.Tensor | None = None,
    activation: bool = True,
) -> torch.Tensor:
    """Convolve ``x`` causally per channel with a Triton kernel, as ``causal_conv.causal_conv1d`` does.

    Args:
        x: (b, d, l) inputs, any strides (the mixer's transposed (b, l, d) view works without a copy).
        weight: (d, k) filters.
        bias: (d,) or None.
        window: (b, d, k) the last k raw inputs before ``x``, or None for zeros.
        activation: apply SiLU to the output.

    Returns:
        (b, d, l) outputs in the dtype and with the strides of ``x``, computed in fp32.

    The backward pass is not a Triton kernel: it reruns ``causal_conv.causal_conv1d`` under
    autograd and differentiates that.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, d_inner, length), got shape {tuple(x.shape)}")
    batch, d_inner, _ = x.shape
    if weight.dim() != 2 or weight.shape[0] != d_inner:
        raise ValueError(f"weight must be (d_inner={d_inner}, width), got shape {tuple(weight.shape)}")
    width = weight.shape[1]
    if bias is not None and tuple(bias.shape) != (d_inner,):
        raise ValueError(f"bias must have shape {(d_inner,)}, got {tuple(bias.shape)}")
    if window is not None and tuple(window.shape) != (batch, d_inner, width):
        raise ValueError(f"window must have shape {(batch, d_inner, width)}, got {tuple(window.shape)}")
    _check_device("x", x, weight=weight, bias=bias, window=window)
    if x.numel() == 0:
        return causal_conv1d(x, weight, bias, window=window, activation=activation)

    def prepare(tensor):
        return None if tensor is None else tensor.contiguous()

    return _CausalConvTritonFunction.apply(x, prepare(weight), prepare(bias), prepare(window), activation)


def causal_conv1d_update_triton(
    x: torch.Tensor,
    window: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: bool = True,
) -> torch.Tensor:
    """Advance the convolution by one input with a Triton kernel, updating ``window`` in place.

    Arguments and returns are those of ``causal_conv.causal_conv1d_step``: x (b, d), window
    (b, d, k) with any strides, weight (d, k), bias (d,) or None. Returns (b, d) in the dtype
    that ``window`` and ``weight`` promote to, computed in fp32. Not differentiable.
    """
    if window.dim() != 3:
        raise ValueError(f"window must be (batch, d_inner, width), got shape {tuple(window.shape)}")
    batch, d_inner, width = window.shape
    expected = {"x": (x, (batch, d_inner)), "weight": (weight, (d_inner, width)), "bias": (bias, (d_inner,))}
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} to match window, got {tuple(tensor.shape)}")
    _check_device("window", window, x=x, weight=weight, bias=bias)

    out = window.new_empty(batch, d_inner, dtype=torch.promote_types(window.dtype, weight.dtype))
    if batch == 0 or d_inner == 0:
        return out
    x_c = x.detach().contiguous()
    weight_c = weight.detach().contiguous()
    bias_c = None if bias is None else bias.detach().contiguous()
    grid = (batch, triton.cdiv(d_inner, CONV_BLOCK_D))
    with torch.no_grad():
        _conv_update_kernel[grid](
            x_c, window, weight_c, _or_dummy(bias_c, weight_c), out,
            d_inner, window.stride(0), window.stride(1), window.stride(2),
            WIDTH=width, BLOCK_D=CONV_BLOCK_D, BLOCK_K=triton.next_power_of_2(width),
            HAS_BIAS=bias is not None, ACTIVATION=bool(activation), num_warps=NUM_WARPS,
        )  # fmt: skip
    return out


# --- availability ---------------------------------------------------------------------------


def available(device: torch.device | str | None = None) -> bool:
    """Return whether the kernels can run on ``device``, or on some device when it is None.

    CUDA tensors need triton and a CUDA device. CPU tensors need triton's interpreter, which
    ``TRITON_INTERPRET=1`` turns on if it is set before triton is first imported in the process.
    """
    return unavailable_reason(device) is None


def unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """Return why the kernels cannot run on ``device`` (or anywhere, for None), or None if they can."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    device_type = None if device is None else torch.device(device).type

    if device_type == "cuda" or (device_type is None and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            return "PyTorch reports no CUDA device"
        return None

    if device_type not in (None, "cpu"):
        return f"triton kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1, not on {device_type}"
    if _INTERPRETED_KERNELS:
        return None
    if _interpreter_enabled():
        return (
            "TRITON_INTERPRET=1 was set after triton or mambakit.ops.selective_scan_triton was first imported "
            "in this process, so the kernels were built for the GPU compiler; set it before both imports"
        )
    return (
        "CPU tensors need triton's interpreter; set TRITON_INTERPRET=1 before triton is first imported "
        "(slow, meant for tests) or move the tensors to a CUDA device"
    )

