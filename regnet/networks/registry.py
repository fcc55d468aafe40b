"""The table of network designs, looked up by RegNet's ``NetworkDesign`` names."""
from __future__ import annotations

import difflib

from regnet import RegNetError
from regnet.networks import crop4, decimation4, unet1
from regnet.networks.spec import NetworkSpec

#: Every network design by its RegNet name.
NETWORKS: dict[str, NetworkSpec] = {spec.name: spec for spec in (
    crop4.SPEC, decimation4.SPEC, unet1.SPEC, unet1.SPEC_CROP5)}

#: The short names RegNet used in experiment folder names.
ALIASES = {"crop4": "crop4_connection", "dec4": "decimation4", "crop5": "crop5_connection"}


def get_spec(name: str) -> NetworkSpec:
    """The design called ``name`` (or its short alias); a did-you-mean error otherwise."""
    if isinstance(name, str):
        name = ALIASES.get(name, name)
        if name in NETWORKS:
            return NETWORKS[name]
    choices = list(NETWORKS) + list(ALIASES)
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.4)
    hint = f"did you mean {ALIASES.get(close[0], close[0])!r}? " if close else ""
    raise RegNetError(f"unknown network {name!r}; {hint}available: {', '.join(NETWORKS)}")
