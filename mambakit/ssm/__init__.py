"""The ideas Mamba rests on, one module each, small enough to read and tested against references.

- ``continuous``: the continuous-time SSM x' = A x + B u, y = C x + D u and its exact
  impulse and step responses.
- ``discretization``: zero-order hold (exact and Mamba's simplified B_bar = ΔB), bilinear and
  Euler, for dense and diagonal A.
- ``hippo``: the HiPPO matrices LegS, LegT and LagT, the S4D diagonal initialisations and
  online function approximation with LegS.
- ``lti``: ``S4DLayer``, a diagonal LTI SSM layer with convolution and recurrent modes.
"""

from mambakit.ssm.continuous import (
    STEP_RESPONSE_METHODS,
    ContinuousSSM,
    impulse_response,
    integrate_matrix_exponential,
    random_stable_ssm,
    step_response,
)
from mambakit.ssm.discretization import (
    METHODS,
    ZOHSimplificationError,
    discrete_response,
    discretize_dense,
    discretize_diagonal,
    estimate_order,
    step_response_error,
    zoh_simplification_error,
)
from mambakit.ssm.hippo import (
    HIPPO_MEASURES,
    LEGS_METHODS,
    S4D_INITS,
    hippo_lagt,
    hippo_legs,
    hippo_legt,
    hippo_matrices,
    legs_online_coefficients,
    legs_reconstruct,
    legs_transition,
    legt_reconstruct,
    s4d_init,
    s4d_inv,
    s4d_lin,
    s4d_real,
)
from mambakit.ssm.lti import S4DLayer

__all__ = [
    "HIPPO_MEASURES",
    "LEGS_METHODS",
    "METHODS",
    "S4D_INITS",
    "STEP_RESPONSE_METHODS",
    "ContinuousSSM",
    "S4DLayer",
    "ZOHSimplificationError",
    "discrete_response",
    "discretize_dense",
    "discretize_diagonal",
    "estimate_order",
    "hippo_lagt",
    "hippo_legs",
    "hippo_legt",
    "hippo_matrices",
    "impulse_response",
    "integrate_matrix_exponential",
    "legs_online_coefficients",
    "legs_reconstruct",
    "legs_transition",
    "legt_reconstruct",
    "random_stable_ssm",
    "s4d_init",
    "s4d_inv",
    "s4d_lin",
    "s4d_real",
    "step_response",
    "step_response_error",
    "zoh_simplification_error",
]
