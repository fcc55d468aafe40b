"""RegNet: supervised 3D deformable registration trained on synthetic DVFs.

Conventions (fixed, see docs in README): arrays are NumPy ``(z, y, x)``; a DVF array is
``(z, y, x, 3)`` float32 in millimetres with components in physical ``(x, y, z)`` order,
defined on the fixed grid, ``x_moving = x_fixed + u(x_fixed)``.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``regnet.register(...)`` without importing it first; lazy, as it pulls in SimpleITK and
    the registration stack, which ``regnet --help`` and the reader do not need."""
    if name == "register":
        import importlib

        return importlib.import_module("regnet.register")
    raise AttributeError(f"module 'regnet' has no attribute {name!r}")


class RegNetError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""
