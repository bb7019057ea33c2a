"""An S4D-style linear time-invariant (LTI) SSM layer with convolution and recurrent modes.

Glossary of shape letters and symbols:

    batch   batch size
    L       sequence length
    H       channels, ``d_model``, each an independent single-input SSM
    N       ``d_state``, the real state size per channel
    M       diagonal modes per channel: N for real A, N/2 for complex A
    A       diagonal state matrix, (H, M), real or complex, real part < 0
    B, C    input and output vectors, (H, M)
    D       skip connection, (H,)
    Δ       step size per channel, (H,), learned as log Δ
    A_bar   exp(ΔA), the ZOH state matrix, (H, M)
    B_bar   (exp(ΔA) - 1) / A · B, the ZOH input vector, (H, M)
    K       convolution kernel, (H, L)

Per channel the layer computes the discrete SSM

    x_k = A_bar x_{k-1} + B_bar u_k,    y_k = Re(C x_k) + D u_k    (x_{-1} = 0)

in one of two equivalent ways:

    convolution (training):  y = K * u + D u,  K_l = Re(Σ_m C_m B_bar_m A_bar_m^l), l = 0 .. L-1
    recurrence (inference):  ``step`` applies the update above to one time step

For a diagonal A the powers A_bar^l form a Vandermonde matrix, computed directly as
exp(l ΔA) for ZOH. The causal convolution runs through ``torch.fft.rfft`` with both signals
zero-padded to 2L, because an FFT of length L would compute a circular convolution and wrap
the end of the sequence onto its start.

Complex A follows S4D: each complex mode stands for itself and its complex conjugate, whose
contributions to a real input are conjugates too, so the layer keeps N/2 modes and takes
2 Re(·) of their sum. A real A keeps all N modes and has no factor 2.

The SSM output then passes through the S4D output block: GELU, dropout, then a linear map
from H to 2H channels and a gated linear unit (GLU). The GLU multiplies one half of those
channels by the sigmoid of the other half. Input and output are both (batch, L, d_model), so the
layer can stand in for a sequence mixer. ``output_block=False`` leaves the block out.

``S4DMixer`` puts the SSM (without its output block) into the structure of a Mamba mixer, so a
language model can swap the selective scan for an LTI SSM and keep everything else the same.
Its extra shape letters are m ``d_model`` and d ``d_inner``, the channels of the SSM there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mambakit.modules.mixer import split_gate
from mambakit.ssm.discretization import discretize_diagonal
from mambakit.ssm.hippo import S4D_INITS, s4d_init


def fast_fft_length(minimum: int) -> int:
    """Return the smallest n >= ``minimum`` whose only prime factors are 2, 3 and 5.

    FFTs of such lengths run fastest. 2L for L = 272, the Selective Copying sequence of context
    256, is 2^5 * 17, and the factor 17 made the FFTs about a third of an S4D training step.
    """
    if minimum < 1:
        raise ValueError(f"minimum must be positive, got {minimum}")
    best = 1
    while best < minimum:
        best *= 2
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35
            while candidate < minimum:
                candidate *= 2
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


class S4DLayer(nn.Module):
    """Diagonal LTI SSM with a gated output, (batch, length, d_model) -> (batch, length, d_model).

    Args:
        d_model: channels H of the input and output.
        d_state: real state size N per channel. Complex A (``real=False``) keeps N/2 modes,
            so N must be even.
        dt_min, dt_max: range of the initial step sizes Δ, drawn log-uniformly per channel.
        init: initialisation of A, one of ``S4D_INITS``. ``"s4d-real"`` gives A = -(1..M),
            Mamba's initialisation.
        real: keep A real. Only ``"s4d-real"`` has a useful real part, because S4D-Lin and
            S4D-Inv share the real part -1/2 and differ only in their imaginary parts.
        dropout: dropout probability after the GELU.
        output_block: apply GELU, dropout, the H -> 2H linear map and the GLU after the SSM.
            With False the layer returns the SSM output y = K * u + D u itself.

    A is stored as log(-Re A) (and Im A for complex A), so Re A stays negative and every mode
    decays under training. B is initialised to ones and C from a standard normal, as in S4D.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        init: str = "s4d-lin",
        real: bool = False,
        dropout: float = 0.0,
        output_block: bool = True,
    ) -> None:
        super().__init__()
        if d_model < 1:
            raise ValueError(f"d_model must be positive, got {d_model}")
        if d_state < 1:
            raise ValueError(f"d_state must be positive, got {d_state}")
        if not real and d_state % 2 != 0:
            raise ValueError(
                f"d_state must be even for complex A (real=False), got {d_state}; "
                "each complex mode stands for two real states"
            )
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if init not in S4D_INITS:
            raise ValueError(f"unknown init {init!r}; use one of {S4D_INITS}")
        if real and init != "s4d-real":
            raise ValueError(
                f"real=True needs init='s4d-real', got init={init!r}: S4D-Lin and S4D-Inv "
                "give every mode the real part -1/2, so a real A would have identical modes"
            )

        self.d_model = d_model
        self.d_state = d_state
        self.real = real
        self.num_modes = d_state if real else d_state // 2
        H, M = d_model, self.num_modes

        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)

        A = s4d_init(init, M)
        if not real and not A.is_complex():
            # S4D-Real as a complex A: the imaginary parts start at 0 and are trained.
            A = torch.complex(A, torch.zeros_like(A))
        self.A_log = nn.Parameter(torch.log(-A.real).repeat(H, 1))
        if real:
            self.register_parameter("A_imag", None)
            self.B = nn.Parameter(torch.ones(H, M))
            self.C = nn.Parameter(torch.randn(H, M))
        else:
            self.A_imag = nn.Parameter(A.imag.repeat(H, 1))
            # Complex B and C are stored as (real, imag) pairs in a last dimension of 2 so that
            # .double() and optimizers see ordinary real tensors.
            self.B = nn.Parameter(torch.view_as_real(torch.ones(H, M, dtype=torch.cfloat)).clone())
            self.C = nn.Parameter(torch.view_as_real(torch.randn(H, M, dtype=torch.cfloat)).clone())
        self.D = nn.Parameter(torch.randn(H))

        self.output_block = output_block
        self.dropout = nn.Dropout(dropout)
        if output_block:
            self.output_linear = nn.Linear(H, 2 * H)
        else:
            self.register_module("output_linear", None)

    def state_matrix(self) -> torch.Tensor:
        """Return A, (H, M), complex unless ``real``."""
        real_part = -torch.exp(self.A_log)
        if self.real:
            return real_part
        return torch.complex(real_part, self.A_imag)

    def _input_output_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.real:
            return self.B, self.C
        return torch.view_as_complex(self.B), torch.view_as_complex(self.C)

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the ZOH discretization (A_bar, B_bar), both (H, M)."""
        B, _ = self._input_output_vectors()
        return discretize_diagonal(self.state_matrix(), B, torch.exp(self.log_dt)[:, None], "zoh")

    def _project(self, weighted: torch.Tensor) -> torch.Tensor:
        """Map a sum over complex modes to the real output 2 Re(·), and pass a real sum through."""
        return weighted if self.real else 2 * weighted.real

    def kernel(self, length: int) -> torch.Tensor:
        """Compute K_l = Re(Σ_m C_m B_bar_m A_bar_m^l) for l = 0 .. length-1, as (H, length)."""
        _, C = self._input_output_vectors()
        A = self.state_matrix()
        delta_A = torch.exp(self.log_dt)[:, None] * A
        _, B_bar = self.discretize()
        steps = torch.arange(length, dtype=self.log_dt.dtype, device=self.log_dt.device)
        # Vandermonde matrix of A_bar. A_bar^l = exp(l ΔA) is exact for ZOH and avoids the
        # rounding that accumulates in repeated multiplication.
        vandermonde = torch.exp(delta_A[..., None] * steps)
        return self._project(torch.einsum("hm,hml->hl", C * B_bar, vandermonde))

    def _check_input(self, u: torch.Tensor) -> None:
        if u.ndim != 3 or u.shape[-1] != self.d_model:
            raise ValueError(
                f"input must have shape (batch, length, d_model={self.d_model}), "
                f"got {tuple(u.shape)}"
            )

    def ssm_convolution(self, u: torch.Tensor) -> torch.Tensor:
        """Apply the SSM alone, y = K * u + D u, by FFT; u and y are (batch, L, H)."""
        self._check_input(u)
        length = u.shape[1]
        K = self.kernel(length)
        # Any length of at least 2L - 1 keeps the circular convolution from wrapping around.
        fft_length = fast_fft_length(2 * length - 1)
        u_channels = u.transpose(1, 2).to(K.dtype)
        product = torch.fft.rfft(u_channels, n=fft_length) * torch.fft.rfft(K, n=fft_length)
        y = torch.fft.irfft(product, n=fft_length)[..., :length]
        y = y + self.D[:, None] * u_channels
        return y.transpose(1, 2)

    def _output_block(self, y: torch.Tensor) -> torch.Tensor:
        """GELU, dropout, linear to 2H channels and GLU; (..., H) -> (..., H)."""
        if not self.output_block:
            return y
        y = self.dropout(F.gelu(y))
        return F.glu(self.output_linear(y), dim=-1)

    def final_state(self, u: torch.Tensor) -> torch.Tensor:
        """Compute the state after the input without a loop: x_{L-1} = Σ_j A_bar^(L-1-j) B_bar u_j.

        Args:
            u: (batch, L, H).

        Returns:
            (batch, H, M), the state ``step`` continues from, for example after a prompt.
        """
        self._check_input(u)
        length = u.shape[1]
        A = self.state_matrix()
        delta_A = torch.exp(self.log_dt)[:, None] * A
        _, B_bar = self.discretize()
        remaining = torch.arange(length - 1, -1, -1, dtype=self.log_dt.dtype, device=u.device)
        vandermonde = torch.exp(delta_A[..., None] * remaining)
        u_channels = u.to(self.log_dt.dtype).transpose(1, 2).to(vandermonde.dtype)
        return torch.einsum("hm,hml,bhl->bhm", B_bar, vandermonde, u_channels)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Run the layer in convolution mode; u (batch, L, d_model) -> (batch, L, d_model).

        Computes in the dtype of the parameters and returns the dtype of ``u``.
        """
        y = self.ssm_convolution(u.to(self.log_dt.dtype))
        return self._output_block(y).to(u.dtype)

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """Return a zero state, (batch_size, H, M), complex unless ``real``."""
        A = self.state_matrix()
        return torch.zeros(batch_size, self.d_model, self.num_modes, dtype=A.dtype, device=A.device)

    def step(self, u_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance the recurrence by one time step.

        Args:
            u_t: input at this step, (batch, d_model).
            state: state before the step, (batch, H, M), from ``initial_state`` or a prior step.

        Returns:
            (output, state): the layer output (batch, d_model) and the new state (batch, H, M).
        """
        if u_t.ndim != 2 or u_t.shape[-1] != self.d_model:
            raise ValueError(
                f"u_t must have shape (batch, d_model={self.d_model}), got {tuple(u_t.shape)}"
            )
        _, C = self._input_output_vectors()
        A_bar, B_bar = self.discretize()
        u_param = u_t.to(self.log_dt.dtype)
        state = A_bar * state + B_bar * u_param[..., None]
        y = self._project((C * state).sum(dim=-1)) + self.D * u_param
        return self._output_block(y).to(u_t.dtype), state

    def recurrent_forward(
        self, u: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the layer one step at a time; gives the same output as ``forward``.

        Args:
            u: (batch, L, d_model).
            state: state to start from, (batch, H, M), or None for zeros.

        Returns:
            (output, state): (batch, L, d_model) and the state after the last step.
        """
        self._check_input(u)
        if state is None:
            state = self.initial_state(u.shape[0])
        outputs = []
        for t in range(u.shape[1]):
            y_t, state = self.step(u[:, t], state)
            outputs.append(y_t)
        return torch.stack(outputs, dim=1), state


class S4DMixer(nn.Module):
    """S4D in the structure of a Mamba mixer, (batch, length, d_model) -> (batch, length, d_model).

    Data flow, the same as ``MambaMixer`` except for the SSM:

        in_proj:  (b, l, m) -> x, z (b, l, d) each
        conv1d:   causal depthwise convolution of x, then SiLU
        ssm:      S4D on d channels without its output block, y = K * x + D x by FFT
        gate:     y * silu(z), left out when ``gated`` is False (then in_proj makes x alone)
        out_proj: (b, l, d) -> (b, l, m)

    The gated input projection to 2d channels is the block structure of H3 and Mamba. It gives
    this mixer about as many parameters as a ``MambaMixer`` of the same ``d_model``, ``expand``
    and ``d_state`` (31616 against 32640 for d_model 64, expand 2, d_state 16). The S4D
    parameters (A, B, C, Δ per channel) take the place of the selection projections ``x_proj``
    and ``dt_proj``. S4D's own GELU/GLU output block is left out, because the SiLU gate and
    ``out_proj`` do its work. So the two mixers at equal width differ only in whether Δ, B and
    C depend on the input.

    Args:
        d_model: channels m of the input and output.
        d_inner: channels d of the SSM, ``expand * d_model`` in a ``MambaConfig``.
        d_state: real state size N per SSM channel; complex A (the default) keeps N/2 modes.
        d_conv: width of the causal depthwise convolution.
        dt_min, dt_max: range of the initial step sizes Δ, drawn log-uniformly per channel.
        init, real: initialisation and kind of A, as in ``S4DLayer``.
        conv_bias: give the convolution a bias.
        bias: give ``in_proj`` and ``out_proj`` biases.
        gated: keep the gate branch z. False gives the "no gate" architecture of the Selective
            Copying table in Gu and Dao (2023). Then no gate multiplies the SSM output by a
            function of the current input, so the LTI SSM alone decides what reaches the output.
    """

    def __init__(
        self,
        d_model: int,
        d_inner: int,
        d_state: int = 16,
        d_conv: int = 4,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        init: str = "s4d-lin",
        real: bool = False,
        conv_bias: bool = True,
        bias: bool = False,
        gated: bool = True,
    ) -> None:
        super().__init__()
        if d_inner < 1:
            raise ValueError(f"d_inner must be positive, got {d_inner}")
        if d_conv < 1:
            raise ValueError(f"d_conv must be positive, got {d_conv}")
        self.d_model = d_model
        self.d_inner = d_inner
        self.gated = gated

        self.in_proj = nn.Linear(d_model, (2 if gated else 1) * d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            d_inner, d_inner, kernel_size=d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias
        )
        self.ssm = S4DLayer(
            d_inner, d_state, dt_min=dt_min, dt_max=dt_max, init=init, real=real, output_block=False
        )
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

        # Weight decay would pull A towards 0 (slower decay) and Δ towards 1, so the state
        # matrix, the step sizes and B are left out of it, as Mamba leaves out A_log and D.
        for parameter in (self.ssm.A_log, self.ssm.A_imag, self.ssm.log_dt, self.ssm.B):
            if parameter is not None:
                parameter._no_weight_decay = True

    def forward(
        self,
        hidden_states: torch.Tensor,
        cache: object | None = None,
        attention_mask: torch.Tensor | None = None,
        backend: str | None = None,
    ) -> torch.Tensor:
        """Mix a whole sequence with the LTI SSM.

        Args:
            hidden_states: (b, l, m).
            cache: must be None. The FFT convolution has no recurrent state to continue.
            attention_mask: (b, l) with 0 at left-padding positions, or None. Masked positions
                feed zeros into the convolution and the SSM, so they add nothing to later outputs.
            backend: ignored. It selects a selective-scan backend, and this mixer runs no scan.

        Returns:
            (b, l, m).
        """
        if cache is not None:
            raise NotImplementedError(_NO_CACHE_MESSAGE)
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(
                f"hidden_states must have shape (batch, length, d_model={self.d_model}), "
                f"got {tuple(hidden_states.shape)}"
            )

        x, z = split_gate(self.in_proj(hidden_states), self.gated)  # (b, l, d) each
        mask = None if attention_mask is None else attention_mask[:, :, None].to(x.dtype)
        if mask is not None:
            x = x * mask

        length = x.shape[1]
        x = self.conv1d(x.transpose(1, 2))[..., :length].transpose(1, 2)  # causal: drop the tail
        x = F.silu(x)
        if mask is not None:
            x = x * mask

        y = self.ssm(x)
        if z is not None:
            y = y * F.silu(z)
        return self.out_proj(y)

    def step(self, hidden_states: torch.Tensor, cache: object, backend: str = "auto") -> torch.Tensor:
        """Raise NotImplementedError: one-token decoding needs a cache this mixer does not keep."""
        raise NotImplementedError(_NO_CACHE_MESSAGE)


_NO_CACHE_MESSAGE = (
    "the s4d mixer runs only as an FFT convolution over a whole sequence and keeps no inference "
    "cache; call the model without cache= (and without step), or build it with "
    "MambaConfig(mixer='mamba') for cached, token-by-token generation"
)
