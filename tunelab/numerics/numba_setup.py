"""numba settings for the CPU kernels in this package; imported by the package before any module imports numba.

numba's default OpenMP threading layer and torch's OpenMP pool spin against each other: on 2 cores a 0.3 ms numba
kernel took 80 ms right after a torch matmul, and the next torch op slowed down too. The work-queue layer does not
spin. A user's NUMBA_THREADING_LAYER wins; if numba was imported first, its config is set directly.
"""

import os
import sys

LAYER = os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
if "numba" in sys.modules:
    sys.modules["numba"].config.THREADING_LAYER = LAYER
