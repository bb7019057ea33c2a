"""Checks of the Triton scan, decode and convolution kernels against the PyTorch references.

Without a CUDA device the kernels run on CPU tensors under triton's interpreter. ``@triton.jit``
reads TRITON_INTERPRET when it decorates a function, and ``triton.language`` decorates its own
functions when it is imported (triton 3.9). So this module sets the variable before it imports
triton. If triton was already imported in this pytest process without it, the kernel tests skip
here and ``test_kernels_in_fresh_process`` runs this file again in a new process. The interpreter
takes about a second per scan of 33 steps, so shapes stay tiny.
"""

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")

from mambakit.ops import selective_scan as scan_module  # noqa: E402
from mambakit.ops import selective_scan_triton as triton_ops  # noqa: E402
from mambakit.ops.causal_conv import causal_conv1d, causal_conv1d_step  # noqa: E402
from mambakit.ops.selective_scan import (  # noqa: E402
    last_backend,
    selective_scan,
    selective_scan_reference,
    selective_state_update_reference,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TENSOR_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# True when triton was imported in this process before this module could turn the interpreter on.
INTERPRETER_SET_TOO_LATE = not torch.cuda.is_available() and triton_ops._interpreter_enabled() and not (
    triton_ops.available(DEVICE)
)


@pytest.fixture(autouse=True)
def kernels_available(request):
    if request.node.originalname == "test_kernels_in_fresh_process":
        return
    if not triton_ops.available(DEVICE):
        pytest.skip(f"Triton kernels unavailable: {triton_ops.unavailable_reason(DEVICE)}")


@pytest.mark.skipif(not INTERPRETER_SET_TOO_LATE, reason="the kernels run in this process")
def test_kernels_in_fresh_process():
    environment = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    result = subprocess.run(
        command,
        cwd=Path(__file__).parents[2],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"


def make_scan_inputs(batch, length, d_inner, d_state, *, variant="all", dtype=torch.float32, seed=0):
    """Return the scan's keyword arguments on DEVICE for one of the option sets in ``VARIANTS``."""
    with_D, with_z, with_bias, with_initial, softplus = VARIANTS[variant]
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(DEVICE, dtype)

    def rand(*shape):
        return torch.rand(*shape, generator=generator, dtype=torch.float64).to(DEVICE, dtype)

    # Without softplus, delta is the step size itself and must stay positive for a stable scan.
    delta = randn(batch, length, d_inner) if softplus else rand(batch, length, d_inner) * 0.5 + 0.01
    return dict(
        u=randn(batch, length, d_inner),
        delta=delta,
        A=-(rand(d_inner, d_state) * 2.0 + 0.05),
        B=randn(batch, length, d_state),
        C=randn(batch, length, d_state),
        D=randn(d_inner) if with_D else None,
        z=randn(batch, length, d_inner) if with_z else None,
        delta_bias=randn(d_inner) * 0.3 if with_bias else None,
        initial_state=randn(batch, d_inner, d_state) if with_initial else None,
        delta_softplus=softplus,
    )


# Option sets: (D, z, delta_bias, initial_state, softplus).
VARIANTS = {
    "all": (True, True, True, True, True),
    "none": (False, False, False, False, False),
    "gate": (False, True, False, False, True),
    "skip-and-state": (True, False, True, True, False),
}


def run_with_grads(scan, inputs, seed=1, use_y=True, use_state=True):
    """Run ``scan`` and return y, the final state and the gradients of a random linear loss.

    ``use_y`` and ``use_state`` select the outputs that the loss depends on.
    """
    leaves = {
        name: inputs[name].detach().clone().requires_grad_(True) for name in TENSOR_NAMES if inputs[name] is not None
    }
    y, final_state = scan(**{**inputs, **leaves}, return_final_state=True)

    generator = torch.Generator().manual_seed(seed)
    weight_y = torch.randn(y.shape, generator=generator, dtype=torch.float64).to(DEVICE)
    weight_state = torch.randn(final_state.shape, generator=generator, dtype=torch.float64).to(DEVICE)
    loss = 0.0
    if use_y:
        loss = loss + (y.double() * weight_y).sum()
    if use_state:
        loss = loss + (final_state.double() * weight_state).sum()
    # A loss on the final state alone does not reach C, D or z in the reference scan.
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    grads = [torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(leaves.values(), grads)]
    return y, final_state, dict(zip(leaves, grads))


def assert_close_scaled(actual, expected, name, tolerance=2e-5):
    """Compare with a tolerance relative to the largest entry of ``expected``."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual = actual.double().cpu()
    expected = expected.double().cpu()
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(
        actual, expected, rtol=tolerance, atol=tolerance * scale + 1e-7, msg=lambda message: f"{name}: {message}"
    )


def assert_scans_match(inputs, tolerance=2e-5, **loss_options):
    y, state, grads = run_with_grads(triton_ops.selective_scan_triton, inputs, **loss_options)
    y_ref, state_ref, grads_ref = run_with_grads(selective_scan_reference, inputs, **loss_options)
    assert y.dtype == inputs["u"].dtype
    assert state.dtype == torch.float32
    assert_close_scaled(y, y_ref, "y", tolerance)
    assert_close_scaled(state, state_ref, "final state", tolerance)
    for name in grads_ref:
        assert grads[name].dtype == inputs[name].dtype, f"grad of {name} has dtype {grads[name].dtype}"
        assert_close_scaled(grads[name], grads_ref[name], f"grad of {name}", tolerance)


# --- selective scan ---------------------------------------------------------------------------

# Lengths 1, 7 and 33 are not multiples of the checkpoint interval (32), and 33 spans two chunks.
# Every length meets every option set twice, because the full cross product would take minutes
# under the interpreter.
SCAN_GRID = [
    (length, d_state, batch, list(VARIANTS)[index % len(VARIANTS)])
    for index, (length, d_state, batch) in enumerate(
        (length, d_state, batch) for length in (1, 7, 33) for d_state in (1, 4, 16, 64) for batch in (1, 3)
    )
]


@pytest.mark.parametrize("length, d_state, batch, variant", SCAN_GRID)
def test_scan_matches_reference(length, d_state, batch, variant):
    inputs = make_scan_inputs(batch, length, 6, d_state, variant=variant, seed=length * 100 + d_state + batch)
    assert_scans_match(inputs)


def test_scan_many_chunks_and_channel_blocks(monkeypatch):
    # 33 steps in chunks of 8 leave a last chunk of one step. 6 channels in blocks of 4 leave a
    # half-empty last block.
    monkeypatch.setattr(triton_ops, "CHECKPOINT_INTERVAL", 8)
    monkeypatch.setattr(triton_ops, "MAX_SCAN_BLOCK_D", 4)
    assert_scans_match(make_scan_inputs(2, 33, 6, 5, seed=7))


@pytest.mark.parametrize("use_y, use_state", [(True, False), (False, True)])
def test_scan_loss_on_one_output(use_y, use_state):
    # Autograd passes None for the gradient of the unused output.
    inputs = make_scan_inputs(2, 7, 6, 4, seed=11)
    assert_scans_match(inputs, use_y=use_y, use_state=use_state)


def test_scan_without_grad_matches_reference():
    inputs = make_scan_inputs(2, 9, 6, 4, seed=3)
    y, state = triton_ops.selective_scan_triton(**inputs, return_final_state=True)
    y_ref, state_ref = selective_scan_reference(**inputs, return_final_state=True)
    assert_close_scaled(y, y_ref, "y")
    assert_close_scaled(state, state_ref, "final state")


def test_scan_returns_y_alone_by_default():
    inputs = make_scan_inputs(1, 3, 6, 4, seed=4)
    y = triton_ops.selective_scan_triton(**inputs)
    assert isinstance(y, torch.Tensor)
    assert_close_scaled(y, selective_scan_reference(**inputs), "y")


def test_scan_non_contiguous_inputs():
    inputs = make_scan_inputs(2, 7, 6, 4, seed=5)
    # (b, d, l) storage seen as (b, l, d), the layout a channels-first caller would pass.
    inputs["u"] = inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)
    inputs["B"] = inputs["B"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not inputs["u"].is_contiguous()
    assert_scans_match(inputs)


def test_scan_empty_sequence():
    inputs = make_scan_inputs(2, 0, 6, 4, seed=6)
    initial = inputs["initial_state"].clone().requires_grad_(True)
    y, state = triton_ops.selective_scan_triton(**{**inputs, "initial_state": initial}, return_final_state=True)
    assert y.shape == (2, 0, 6)
    torch.testing.assert_close(state, initial.detach())
    (grad_initial,) = torch.autograd.grad(state.sum(), [initial])
    torch.testing.assert_close(grad_initial, torch.ones_like(initial))


def test_scan_empty_batch_uses_reference():
    inputs = make_scan_inputs(0, 5, 6, 4, seed=6)
    y, state = triton_ops.selective_scan_triton(**inputs, return_final_state=True)
    assert y.shape == (0, 5, 6)
    assert state.shape == (0, 6, 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scan_half_precision_inputs(dtype):
    inputs = make_scan_inputs(2, 9, 6, 4, dtype=dtype, seed=8)
    inputs["A"] = inputs["A"].float()  # A stays fp32 in the mixer
    # y is rounded to the input dtype, so compare at that precision.
    assert_scans_match(inputs, tolerance=2e-2)


def test_scan_rejects_bad_shape():
    inputs = make_scan_inputs(2, 5, 6, 4)
    inputs["B"] = inputs["B"][:, :, :3]
    with pytest.raises(ValueError, match="B must have shape"):
        triton_ops.selective_scan_triton(**inputs)


# --- dispatch ---------------------------------------------------------------------------------


def test_dispatch_runs_triton_backend():
    inputs = make_scan_inputs(2, 5, 6, 4, seed=9)
    y = selective_scan(**inputs, backend="triton")
    assert last_backend() == "triton"
    assert_close_scaled(y, selective_scan_reference(**inputs), "y")


def test_auto_backend_keeps_cpu_tensors_off_triton():
    assert scan_module.resolve_backend("auto", torch.device("cpu")) in ("cpu", "reference")


def test_triton_backend_without_interpreter_is_rejected(monkeypatch):
    monkeypatch.setattr(triton_ops, "_INTERPRETED_KERNELS", False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="scan backend 'triton' cannot run on cpu.*TRITON_INTERPRET=1"):
        scan_module.resolve_backend("triton", torch.device("cpu"))


def test_triton_backend_interpreter_set_too_late(monkeypatch):
    monkeypatch.setattr(triton_ops, "_INTERPRETED_KERNELS", False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "set it before both imports" in triton_ops.unavailable_reason("cpu")


def test_mamba_ssm_backend_needs_cuda():
    with pytest.raises(ValueError, match="'mamba_ssm' needs CUDA tensors"):
        scan_module.resolve_backend("mamba_ssm", torch.device("cpu"))


def test_mamba_ssm_call_uses_channels_first_layout(monkeypatch):
    # A stand-in for mamba_ssm's selective_scan_fn that checks the (b, d, l) layout and runs the
    # reference scan.
    calls = []

    def fake_selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                               return_last_state=False):  # fmt: skip
        calls.append((tuple(u.shape), tuple(B.shape), A.dtype, D.dtype, delta_bias.dtype))
        result = selective_scan_reference(
            u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D=D,
            z=z.transpose(1, 2), delta_bias=delta_bias, delta_softplus=delta_softplus,
            return_final_state=return_last_state,
        )  # fmt: skip
        if return_last_state:
            return result[0].transpose(1, 2), result[1]
        return result.transpose(1, 2)

    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn = fake_selective_scan_fn
    monkeypatch.setitem(sys.modules, "mamba_ssm", types.ModuleType("mamba_ssm"))
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops", types.ModuleType("mamba_ssm.ops"))
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.selective_scan_interface", interface)

    inputs = make_scan_inputs(2, 5, 6, 4, seed=10)
    initial_state = inputs.pop("initial_state")
    y, state = scan_module._mamba_ssm_scan(**inputs, initial_state=None, return_final_state=True)
    y_ref, state_ref = selective_scan_reference(**inputs, return_final_state=True)
    assert calls == [((2, 6, 5), (2, 4, 5), torch.float32, torch.float32, torch.float32)]
    assert y.shape == (2, 5, 6)
    assert_close_scaled(y, y_ref, "y")
    assert_close_scaled(state, state_ref, "final state")
    with pytest.raises(ValueError, match="does not take an initial_state"):
        scan_module._mamba_ssm_scan(**inputs, initial_state=initial_state, return_final_state=False)


# --- decode step ------------------------------------------------------------------------------


def make_decode_inputs(batch, d_inner, d_state, *, full=True, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(DEVICE)

    return dict(
        x=randn(batch, d_inner),
        dt=randn(batch, d_inner),
        A=-(torch.rand(d_inner, d_state, generator=generator) + 0.1).to(DEVICE),
        B=randn(batch, d_state),
        C=randn(batch, d_state),
        D=randn(d_inner) if full else None,
        z=randn(batch, d_inner) if full else None,
        dt_bias=randn(d_inner) * 0.3 if full else None,
        dt_softplus=full,
    )


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("d_state", [1, 16, 64])
def test_state_update_matches_reference(full, d_state):
    inputs = make_decode_inputs(3, 6, d_state, full=full, seed=d_state)
    state = torch.randn(3, 6, d_state).to(DEVICE)
    state_ref = state.clone()
    y = triton_ops.selective_state_update_triton(state, **inputs)
    y_ref = selective_state_update_reference(state_ref, **inputs)
    assert_close_scaled(y, y_ref, "y", 2e-6)
    assert_close_scaled(state, state_ref, "state", 2e-6)


def test_state_update_non_contiguous_state():
    inputs = make_decode_inputs(2, 6, 4, seed=1)
    storage = torch.randn(2, 4, 6).to(DEVICE)
    state = storage.transpose(1, 2)  # (b, d, n) with the state index outermost in memory
    state_ref = state.clone()
    triton_ops.selective_state_update_triton(state, **inputs)
    selective_state_update_reference(state_ref, **inputs)
    assert_close_scaled(storage.transpose(1, 2), state_ref, "state", 2e-6)


def test_state_update_rejects_bad_shape():
    inputs = make_decode_inputs(2, 6, 4)
    inputs["B"] = inputs["B"][:, :3]
    with pytest.raises(ValueError, match="B must have shape"):
        triton_ops.selective_state_update_triton(torch.zeros(2, 6, 4, device=DEVICE), **inputs)


def test_decode_steps_continue_scan():
    # Prefill with the scan, then decode two tokens: the result must equal one scan over all steps.
    inputs = make_scan_inputs(2, 6, 6, 4, variant="all", seed=12)
    prefix = {name: value[:, :4] if name in ("u", "delta", "B", "C", "z") else value for name, value in inputs.items()}
    _, state = triton_ops.selective_scan_triton(**prefix, return_final_state=True)
    outputs = []
    for t in (4, 5):
        outputs.append(
            triton_ops.selective_state_update_triton(
                state, inputs["u"][:, t], inputs["delta"][:, t], inputs["A"], inputs["B"][:, t], inputs["C"][:, t],
                D=inputs["D"], z=inputs["z"][:, t], dt_bias=inputs["delta_bias"], dt_softplus=True,
            )
        )
    y_ref, state_ref = selective_scan_reference(**inputs, return_final_state=True)
    assert_close_scaled(torch.stack(outputs, dim=1), y_ref[:, 4:], "decoded y")
    assert_close_scaled(state, state_ref, "state")


# --- causal convolution -----------------------------------------------------------------------


@pytest.mark.parametrize("width", [3, 4])
@pytest.mark.parametrize("length", [1, 7, 70])
@pytest.mark.parametrize("with_bias, with_window, activation", [(True, True, True), (False, False, False)])
def test_conv_matches_reference(width, length, with_bias, with_window, activation):
    # 70 channels and 70 steps span two program blocks of 64 in each direction.
    generator = torch.Generator().manual_seed(length * 10 + width)
    d_inner = 70 if length == 70 else 5
    x = torch.randn(2, length, d_inner, generator=generator).to(DEVICE).transpose(1, 2)  # the mixer's view
    weight = torch.randn(d_inner, width, generator=generator).to(DEVICE)
    bias = torch.randn(d_inner, generator=generator).to(DEVICE) if with_bias else None
    window = torch.randn(2, d_inner, width, generator=generator).to(DEVICE) if with_window else None

    out = triton_ops.causal_conv1d_triton(x, weight, bias, window=window, activation=activation)
    expected = causal_conv1d(x, weight, bias, window=window, activation=activation)
    assert out.stride() == x.stride()
    assert_close_scaled(out, expected, "conv output", 1e-6)


def test_conv_backward_matches_reference():
    generator = torch.Generator().manual_seed(0)
    leaves = [
        torch.randn(2, 6, 9, generator=generator),
        torch.randn(6, 4, generator=generator),
        torch.randn(6, generator=generator),
        torch.randn(2, 6, 4, generator=generator),
    ]
    grad_out = torch.randn(2, 6, 9, generator=generator).to(DEVICE)
    grads = {}
    for name, conv in (("triton", triton_ops.causal_conv1d_triton), ("reference", causal_conv1d)):
        inputs = [tensor.to(DEVICE).requires_grad_(True) for tensor in leaves]
        out = conv(inputs[0], inputs[1], inputs[2], window=inputs[3])
        grads[name] = torch.autograd.grad(out, inputs, grad_out)
    for index, name in enumerate(("x", "weight", "bias", "window")):
        assert_close_scaled(grads["triton"][index], grads["reference"][index], f"grad of {name}", 1e-6)


@pytest.mark.parametrize("width", [3, 4])
@pytest.mark.parametrize("with_bias", [False, True])
def test_conv_update_matches_reference(width, with_bias):
    generator = torch.Generator().manual_seed(width)
    x = torch.randn(3, 70, generator=generator).to(DEVICE)
    weight = torch.randn(70, width, generator=generator).to(DEVICE)
    bias = torch.randn(70, generator=generator).to(DEVICE) if with_bias else None
    window = torch.randn(3, 70, width, generator=generator).to(DEVICE)
    window_ref = window.clone()

    out = triton_ops.causal_conv1d_update_triton(x, window, weight, bias)
    expected = causal_conv1d_step(x, window_ref, weight, bias)
    assert_close_scaled(out, expected, "conv step output", 1e-6)
    torch.testing.assert_close(window, window_ref)


def test_conv_update_window_view_of_cache():
    # The cache stores windows as (layers, b, d, k), so a layer's window is a view into it.
    generator = torch.Generator().manual_seed(1)
    cache = torch.randn(2, 3, 5, 4, generator=generator).to(DEVICE)
    cache_ref = cache.clone()
    x = torch.randn(3, 5, generator=generator).to(DEVICE)
    weight = torch.randn(5, 4, generator=generator).to(DEVICE)
    triton_ops.causal_conv1d_update_triton(x, cache[1], weight)
    causal_conv1d_step(x, cache_ref[1], weight)
    torch.testing.assert_close(cache, cache_ref)


# --- whole model ------------------------------------------------------------------------------


def tiny_model():
    from mambakit.config import MambaConfig
    from mambakit.models.mamba_lm import Mamba

    torch.manual_seed(0)
    return Mamba(MambaConfig(d_model=8, n_layer=2, vocab_size=32, d_state=4)).to(DEVICE).eval()


def test_model_forward_with_triton_backend():
    model = tiny_model()
    input_ids = torch.randint(0, 32, (2, 5), device=DEVICE)
    with torch.no_grad():
        logits = model(input_ids, backend="triton")
        expected = model(input_ids, backend="reference")
    assert_close_scaled(logits, expected, "logits", 1e-5)


def test_model_step_with_triton_decode_ops(monkeypatch):
    # Both the state update and the conv step go through the backend dispatch.
    calls = []
    original = triton_ops.causal_conv1d_update_triton

    def counted_update(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(triton_ops, "causal_conv1d_update_triton", counted_update)
    model = tiny_model()
    input_ids = torch.randint(0, 32, (2, 3), device=DEVICE)
    logits = {}
    for name in ("reference", "triton"):
        cache = model.allocate_cache(2)
        logits[name] = torch.stack([model.step(input_ids[:, t], cache, backend=name) for t in range(3)], dim=1)
    assert_close_scaled(logits["triton"], logits["reference"], "logits", 1e-5)
    # One conv step per layer and token, all of them in the triton run.
    assert len(calls) == model.config.n_layer * 3


# --- CUDA only --------------------------------------------------------------------------------


@needs_cuda
def test_auto_backend_picks_triton_on_cuda():
    assert scan_module.resolve_backend("auto", torch.device("cuda")) == "triton"


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_scan_cuda_larger_shapes(dtype):
    # 300 steps span ten checkpoint chunks, and 200 channels span several channel blocks.
    inputs = make_scan_inputs(2, 300, 200, 16, dtype=dtype, seed=20)
    inputs["A"] = inputs["A"].float()
    assert_scans_match(inputs, tolerance=2e-2 if dtype != torch.float32 else 1e-4)


@needs_cuda
def test_state_update_cuda_bf16_inputs():
    inputs = make_decode_inputs(64, 1536, 16, seed=21)
    for name in ("x", "dt", "B", "C", "z"):
        inputs[name] = inputs[name].bfloat16()
    state = torch.randn(64, 1536, 16, device=DEVICE)
    state_ref = state.clone()
    y = triton_ops.selective_state_update_triton(state, **inputs)
    y_ref = selective_state_update_reference(state_ref, **inputs)
    assert y.dtype == torch.bfloat16
    assert_close_scaled(y, y_ref, "y", 2e-2)
    assert_close_scaled(state, state_ref, "state", 1e-5)


@needs_cuda
def test_state_update_cuda_graph_replay():
    inputs = make_decode_inputs(4, 256, 16, seed=22)
    state = torch.zeros(4, 256, 16, device=DEVICE)
    triton_ops.selective_state_update_triton(state, **inputs)  # compile outside the capture
    state.zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = triton_ops.selective_state_update_triton(state, **inputs)
    state.zero_()
    graph.replay()
    state_ref = torch.zeros_like(state)
    y_ref = selective_state_update_reference(state_ref, **inputs)
    assert_close_scaled(y, y_ref, "y", 2e-6)
    assert_close_scaled(state, state_ref, "state", 2e-6)
