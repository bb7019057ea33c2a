"""One-time check that a family of numba kernels compiles and runs, shared by the CPU backends."""

from __future__ import annotations

import logging
import os
from typing import Callable

from numba.core.errors import NumbaError

logger = logging.getLogger(__name__)

DISABLE_ENV_VAR = "MAMBAKIT_DISABLE_NUMBA"


class KernelProbe:
    """Run ``probe`` on first use and remember whether it worked.

    ``probe`` compiles (or loads from numba's cache) a kernel, runs it on a tiny input and
    raises if the result is wrong. Setting ``MAMBAKIT_DISABLE_NUMBA=1`` makes every probe report
    the kernels unavailable, which forces the reference implementations.
    """

    def __init__(self, description: str, probe: Callable[[], None]) -> None:
        self.description = description
        self.probe = probe
        self.error: str | None = None
        self.done = False

    def available(self) -> bool:
        """Return whether the kernels can run here; the first call runs the probe."""
        if os.environ.get(DISABLE_ENV_VAR, "") == "1":
            return False
        if not self.done:
            try:
                self.probe()
            except (NumbaError, RuntimeError, OSError) as error:
                self.error = f"{type(error).__name__}: {error}"
                logger.warning("numba %s kernels failed their first run: %s", self.description, self.error)
            self.done = True
        return self.error is None

    def unavailable_reason(self) -> str | None:
        """Return why ``available()`` is False, or None when it is True or was never called."""
        if os.environ.get(DISABLE_ENV_VAR, "") == "1":
            return f"disabled by {DISABLE_ENV_VAR}=1"
        return self.error
