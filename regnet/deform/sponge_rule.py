"""Where the sponge's random factor may act (issue 15 item 6), shared by the NumPy and device paths.

CT calibration pins water at 0 HU and air at -1000 HU, so a different inspiration level changes
the density of lung parenchyma, not of soft tissue, fat or bone. The factor acts fully below
``LUNG_HU``, not at all above ``SOFT_HU``, linearly between. No SimpleITK here: the device
path imports this.
"""
from __future__ import annotations

import numpy as np

LUNG_HU, SOFT_HU = -600.0, -200.0


def sponge_factor_weight(hu, clip=np.clip):
    """1 in parenchyma, 0 in water-like tissue; ``clip`` is ``np.clip`` or ``keras.ops.clip``."""
    return clip((SOFT_HU - hu) / (SOFT_HU - LUNG_HU), 0.0, 1.0)
