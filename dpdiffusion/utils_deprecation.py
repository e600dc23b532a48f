"""Deprecated names that keep working for a while, in diffusers' ``deprecate`` style but against this package's version.

diffusers' own ``diffusers.utils.deprecate`` compares the removal version with *diffusers'* version, so it cannot date
a removal of this package's names; this is the same contract (a ``FutureWarning`` that names the old argument, the
version that removes it and what to use instead; a ``ValueError`` once that version is reached, so that nobody forgets
to remove it; a ``TypeError`` for any other unexpected keyword) for ``dpdiffusion``'s own names.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

__all__ = ["IMAGES_REMOVAL_VERSION", "deprecate", "renamed_argument"]

# ``images`` -> ``image`` (diffusers' name for the input of every image-to-image pipeline); see ``renamed_argument``
IMAGES_REMOVAL_VERSION = "0.3.0"


def deprecate(attribute: str, removal_version: str, message: str, *, take_from: dict, stacklevel: int = 3) -> Any:
    """Pop the deprecated keyword ``attribute`` from ``take_from`` with a ``FutureWarning``; ``None`` if absent.

    Args:
        attribute (`str`): the deprecated keyword.
        removal_version (`str`): the ``dpdiffusion`` version that removes it.
        message (`str`): what to use instead.
        take_from (`dict`): the caller's ``**kwargs`` (modified in place).
        stacklevel (`int`): ``warnings.warn``'s, so that the warning points at the user's call.

    Raises:
        ValueError: ``dpdiffusion``'s version has reached ``removal_version`` (remove the deprecated name).
    """
    # the package's __init__ imports nothing of its own: no import cycle
    from . import __version__

    if _release(__version__) >= _release(removal_version):
        raise ValueError(f"the deprecation of {attribute!r} should be removed since dpdiffusion's version "
                         f"{__version__} is >= {removal_version}")
    if attribute not in take_from:
        return None
    warnings.warn(f"The `{attribute}` argument is deprecated and will be removed in version {removal_version}. "
                  f"{message}", FutureWarning, stacklevel=stacklevel)
    return take_from.pop(attribute)


def _release(v: str) -> tuple:
    """``"0.3.0.dev1"`` -> ``(0, 3, 0)``: the release part of a version, compared as numbers."""
    return tuple(int(p) for p in re.findall(r"\d+", v.split("+")[0])[:3])


def renamed_argument(value: Any, kwargs: dict, *, old: str, new: str, where: str,
                     removal_version: str = IMAGES_REMOVAL_VERSION, stacklevel: int = 5) -> Any:
    """The value of the argument ``new``, taking the deprecated spelling ``old`` from ``kwargs`` (with a warning).

    Args:
        value: what the caller passed as ``new`` (``None`` when not passed).
        kwargs (`dict`): the caller's remaining keyword arguments; must be empty once ``old`` is taken.
        old (`str`), new (`str`): the deprecated and the current name.
        where (`str`): the function, for the error messages.
        stacklevel (`int`): the warning's; the default points at the user's call of a ``@torch.no_grad()`` method
            (the decorator adds a frame).

    Raises:
        ValueError: both ``old`` and ``new`` were given.
        TypeError: any other keyword in ``kwargs`` (as Python says for an unknown keyword argument).
    """
    given = old in kwargs
    if given and value is not None:
        raise ValueError(f"pass {new}= only ({old}= is its deprecated name), not both")
    old_value = deprecate(old, removal_version, f"Use `{new}` instead (diffusers' name for the input image).",
                          take_from=kwargs, stacklevel=stacklevel)
    if kwargs:
        raise TypeError(f"{where}() got an unexpected keyword argument {next(iter(kwargs))!r}")
    return old_value if given else value
