"""Checks of the numba scan kernels against the reference scan, forward and backward."""

import itertools
import logging

import pytest
import torch

pytest.importorskip("numba")

from mambakit.ops import selective_scan as scan_module  # noqa: E402
from mambakit.ops import selective_scan_cpu as cpu  # noqa: E402
from mambakit.ops.selective_scan import (  # noqa: E402
    last_backend,
    selective_scan,
    selective_scan_reference,
    selective_state_update_reference,
)

TENSOR_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    # The reference scan runs thousands of tiny ops. Intra-op threads do not speed them up, and on
    # a busy machine each threaded op can wait milliseconds for a descheduled worker.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def numba_enabled(monkeypatch):
    monkeypatch.delenv(cpu.DISABLE_ENV_VAR, raising=False)
    if not cpu.available():
        pytest.skip(f"numba kernels unavailable: {cpu.unavailable_reason()}")


def test_fp32_math_relative_error():
    import numba

    @numba.njit
    def evaluate(x, out):
        for i in range(x.size):
            out[0, i] = cpu._exp(x[i])
            out[1, i] = cpu._softplus(x[i])
            out[2, i] = cpu._sigmoid(x[i])

    x = torch.linspace(-80.0, 30.0, 100_001)
    out = torch.empty(3, x.numel())
    evaluate(x.numpy(), out.numpy())

    exact = x.double()
    expected = {
        "exp": exact.exp(),
        "softplus": torch.nn.functional.softplus(exact),
        "sigmoid": torch.sigmoid(exact),
    }
    for row, (name, values) in enumerate(expected.items()):
        relative_error = ((out[row].double() - values).abs() / values).max().item()
        assert relative_error < 4e-7, f"{name}: max relative error {relative_error:.2e}"


def make_inputs(
    batch,
    length,
    d_inner,
    d_state,
    *,
    dtype=torch.float32,
    seed=0,
    with_D=True,
    with_z=True,
    with_bias=True,
    with_initial=True,
    softplus=True,
):
    """Return the scan's keyword arguments with random values in a stable range."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    def rand(*shape):
        return torch.rand(*shape, generator=generator, dtype=torch.float64).to(dtype)

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


def tensors_of(inputs):
    return {name: inputs[name] for name in TENSOR_NAMES if inputs[name] is not None}


def run_with_grads(scan, inputs, seed=1):
    """Run ``scan`` and return y, the final state and the gradients of a random linear loss."""
    leaves = {name: tensor.detach().clone().requires_grad_(True) for name, tensor in tensors_of(inputs).items()}
    kwargs = {**inputs, **leaves}
    y, final_state = scan(**kwargs, return_final_state=True)

    generator = torch.Generator().manual_seed(seed)
    weight_y = torch.randn(y.shape, generator=generator, dtype=torch.float64).to(y.dtype)
    weight_state = torch.randn(final_state.shape, generator=generator, dtype=torch.float64).to(final_state.dtype)
    loss = (y.double() * weight_y.double()).sum() + (final_state.double() * weight_state.double()).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return y, final_state, dict(zip(leaves, grads))


def assert_close_scaled(actual, expected, name, tolerance=2e-5):
    """Compare with a tolerance relative to the largest entry of ``expected``."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual = actual.double()
    expected = expected.double()
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance * scale + 1e-7, msg=lambda m: f"{name}: {m}")


def assert_scans_match(inputs, tolerance=2e-5):
    y, state, grads = run_with_grads(cpu.selective_scan_cpu, inputs)
    y_ref, state_ref, grads_ref = run_with_grads(selective_scan_reference, inputs)
    assert y.dtype == inputs["u"].dtype
    assert_close_scaled(y, y_ref, "y", tolerance)
    assert_close_scaled(state, state_ref, "final state", tolerance)
    for name in grads_ref:
        assert grads[name].dtype == inputs[name].dtype, f"grad of {name} has dtype {grads[name].dtype}"
        assert_close_scaled(grads[name], grads_ref[name], f"grad of {name}", tolerance)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("d_state", [1, 4, 16, 64])
@pytest.mark.parametrize("length", [1, 2, 7, 64, 1000])
def test_scan_matches_reference_shapes(length, d_state, batch):
    d_inner = 3 if length == 1000 else 10
    inputs = make_inputs(batch, length, d_inner, d_state, seed=length * 100 + d_state + batch)
    assert_scans_match(inputs)


@pytest.mark.parametrize(
    "with_D, with_z, with_bias, with_initial, softplus",
    list(itertools.product([False, True], repeat=5)),
)
def test_scan_matches_reference_options(with_D, with_z, with_bias, with_initial, softplus):
    inputs = make_inputs(
        2, 70, 10, 4,
        with_D=with_D, with_z=with_z, with_bias=with_bias, with_initial=with_initial, softplus=softplus,
    )  # fmt: skip
    assert_scans_match(inputs)


def test_scan_many_blocks_and_chunks():
    # 130 channels span several forward and backward blocks with a partial last one, and 130 steps
    # span three checkpoint chunks with a partial last one.
    inputs = make_inputs(2, 130, 130, 16, seed=7)
    assert_scans_match(inputs)


def test_scan_short_checkpoint_interval(monkeypatch):
    monkeypatch.setattr(cpu, "CHECKPOINT_INTERVAL", 3)
    inputs = make_inputs(3, 11, 9, 4, seed=8)
    assert_scans_match(inputs)


def test_scan_non_contiguous_inputs():
    inputs = make_inputs(2, 33, 12, 8, seed=9)
    # Rebuild every tensor as a strided view with the same values.
    for name in ("u", "delta", "z", "B", "C"):
        inputs[name] = inputs[name].transpose(1, 2).contiguous().transpose(1, 2)
    inputs["A"] = inputs["A"].t().contiguous().t()
    inputs["initial_state"] = inputs["initial_state"].transpose(1, 2).contiguous().transpose(1, 2)
    inputs["D"] = torch.stack([inputs["D"], inputs["D"]], dim=1)[:, 0]
    for name in ("u", "delta", "z", "B", "C", "A", "initial_state", "D"):
        assert not inputs[name].is_contiguous(), name
    assert_scans_match(inputs)


def test_scan_only_some_inputs_need_grad():
    inputs = make_inputs(2, 20, 6, 4, seed=10)
    u = inputs["u"].clone().requires_grad_(True)
    y = cpu.selective_scan_cpu(**{**inputs, "u": u})
    (grad_u,) = torch.autograd.grad(y.sum(), [u])

    u_ref = inputs["u"].clone().requires_grad_(True)
    y_ref = selective_scan_reference(**{**inputs, "u": u_ref})
    (grad_u_ref,) = torch.autograd.grad(y_ref.sum(), [u_ref])
    assert_close_scaled(grad_u, grad_u_ref, "grad of u")


def test_scan_without_grad_matches_reference():
    inputs = make_inputs(2, 90, 70, 16, seed=11)
    with torch.no_grad():
        y, state = cpu.selective_scan_cpu(**inputs, return_final_state=True)
        y_ref, state_ref = selective_scan_reference(**inputs, return_final_state=True)
    assert_close_scaled(y, y_ref, "y")
    assert_close_scaled(state, state_ref, "final state")


def test_scan_empty_sequence():
    inputs = make_inputs(2, 0, 5, 4, seed=12)
    initial = inputs["initial_state"].clone().requires_grad_(True)
    y, state = cpu.selective_scan_cpu(**{**inputs, "initial_state": initial}, return_final_state=True)
    assert y.shape == (2, 0, 5)
    torch.testing.assert_close(state, initial.detach())

    (grad_initial,) = torch.autograd.grad(state.sum(), [initial])
    torch.testing.assert_close(grad_initial, torch.ones_like(initial))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scan_low_precision_inputs(dtype):
    inputs = make_inputs(2, 40, 8, 4, dtype=dtype, seed=13)
    y, state, grads = run_with_grads(cpu.selective_scan_cpu, inputs)
    y_ref, state_ref, grads_ref = run_with_grads(selective_scan_reference, inputs)
    assert y.dtype == dtype
    assert state.dtype == torch.float32
    # Both scans run in fp32 from the same rounded inputs, so only the final rounding differs.
    assert_close_scaled(y, y_ref, "y", tolerance=1e-2)
    assert_close_scaled(state, state_ref, "final state", tolerance=1e-4)
    for name in grads_ref:
        assert grads[name].dtype == dtype, f"grad of {name} has dtype {grads[name].dtype}"
        assert_close_scaled(grads[name], grads_ref[name], f"grad of {name}", tolerance=1e-2)


def test_scan_fp64_gradcheck(monkeypatch):
    # A checkpoint every 2 steps makes the 5 steps cross chunk boundaries in the backward pass.
    monkeypatch.setattr(cpu, "CHECKPOINT_INTERVAL", 2)
    inputs = make_inputs(2, 5, 3, 2, dtype=torch.float64, seed=14)
    leaves = {name: tensor.clone().requires_grad_(True) for name, tensor in tensors_of(inputs).items()}

    def scan(*tensors):
        kwargs = {**inputs, **dict(zip(leaves, tensors))}
        return cpu.selective_scan_cpu(**kwargs, return_final_state=True)

    assert torch.autograd.gradcheck(scan, tuple(leaves.values()), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_scan_fp64_without_softplus_gradcheck():
    inputs = make_inputs(1, 4, 2, 3, dtype=torch.float64, seed=15, softplus=False, with_initial=False)
    leaves = {name: tensor.clone().requires_grad_(True) for name, tensor in tensors_of(inputs).items()}

    def scan(*tensors):
        return cpu.selective_scan_cpu(**{**inputs, **dict(zip(leaves, tensors))})

    assert torch.autograd.gradcheck(scan, tuple(leaves.values()), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_scan_fp64_final_state_dtype():
    inputs = make_inputs(1, 3, 2, 2, dtype=torch.float64, seed=16)
    y, state = cpu.selective_scan_cpu(**inputs, return_final_state=True)
    assert y.dtype == torch.float64
    assert state.dtype == torch.float64


def test_scan_rejects_bad_shape():
    inputs = make_inputs(1, 3, 4, 2)
    inputs["D"] = torch.ones(5)
    with pytest.raises(ValueError, match="D must have shape"):
        cpu.selective_scan_cpu(**inputs)


def make_decode_inputs(batch, d_inner, d_state, *, seed=0, full=True):
    """Return the keyword arguments of one decode step and an fp32 state (b, d, n)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).float()

    return dict(
        x=randn(batch, d_inner),
        dt=randn(batch, d_inner),
        A=-(torch.rand(d_inner, d_state, generator=generator) + 0.1),
        B=randn(batch, d_state),
        C=randn(batch, d_state),
        D=randn(d_inner) if full else None,
        z=randn(batch, d_inner) if full else None,
        dt_bias=randn(d_inner) * 0.3 if full else None,
        dt_softplus=full,
    ), randn(batch, d_inner, d_state).float()


@pytest.mark.parametrize("full", [False, True])
def test_state_update_matches_reference(full):
    inputs, state = make_decode_inputs(3, 70, 16, seed=20, full=full)
    if not full:
        # dt is the step size itself here and must stay positive.
        inputs["dt"] = inputs["dt"].abs() * 0.5
    state_ref = state.clone()
    y = cpu.selective_state_update_cpu(state, **inputs)
    y_ref = selective_state_update_reference(state_ref, **inputs)
    assert y.dtype == torch.float32
    assert_close_scaled(y, y_ref, "y", 2e-6)
    assert_close_scaled(state, state_ref, "state", 2e-6)


def test_state_update_non_contiguous_state():
    inputs, state = make_decode_inputs(2, 6, 4, seed=21)
    strided = state.transpose(1, 2).contiguous().transpose(1, 2)
    state_ref = state.clone()
    y = cpu.selective_state_update_cpu(strided, **inputs)
    y_ref = selective_state_update_reference(state_ref, **inputs)
    assert_close_scaled(y, y_ref, "y", 2e-6)
    assert_close_scaled(strided, state_ref, "state", 2e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_update_steps_equal_scan(dtype):
    # The reference update supports only fp32 states, so fp64 is checked against the fp64 scan.
    inputs = make_inputs(2, 9, 12, 8, dtype=dtype, seed=22)
    y_scan, state_scan = cpu.selective_scan_cpu(**inputs, return_final_state=True)

    state = inputs["initial_state"].clone()
    outputs = []
    for t in range(9):
        outputs.append(
            cpu.selective_state_update_cpu(
                state, inputs["u"][:, t], inputs["delta"][:, t], inputs["A"], inputs["B"][:, t],
                inputs["C"][:, t], D=inputs["D"], z=inputs["z"][:, t], dt_bias=inputs["delta_bias"],
                dt_softplus=True,
            )  # fmt: skip
        )
    tolerance = 1e-12 if dtype == torch.float64 else 1e-6
    assert_close_scaled(torch.stack(outputs, dim=1), y_scan, "y", tolerance)
    assert_close_scaled(state, state_scan, "state", tolerance)


def test_state_update_rejects_bad_shape():
    inputs, state = make_decode_inputs(2, 6, 4)
    inputs["B"] = torch.ones(2, 5)
    with pytest.raises(ValueError, match="B must have shape"):
        cpu.selective_state_update_cpu(state, **inputs)


def test_dispatch_auto_uses_cpu_kernels():
    inputs = make_inputs(1, 4, 3, 2)
    selective_scan(**inputs, backend="auto")
    assert last_backend() == "cpu"


def test_dispatch_falls_back_without_numba(monkeypatch, caplog):
    monkeypatch.setenv(cpu.DISABLE_ENV_VAR, "1")
    monkeypatch.setattr(scan_module, "_warned", set())
    assert not cpu.available()
    assert cpu.DISABLE_ENV_VAR in cpu.unavailable_reason()

    inputs = make_inputs(1, 4, 3, 2)
    with caplog.at_level(logging.WARNING, logger=scan_module.logger.name):
        y = selective_scan(**inputs, backend="auto")
        assert last_backend() == "reference"
        selective_scan(**inputs, backend="auto")
        assert last_backend() == "reference"

    warnings = [record for record in caplog.records if record.levelno == logging.WARNING and record.name == scan_module.logger.name]
    assert len(warnings) == 1, [record.getMessage() for record in warnings]
    assert cpu.DISABLE_ENV_VAR in warnings[0].getMessage()
    torch.testing.assert_close(y, selective_scan_reference(**inputs))
