"""Compatibility layer that makes imagecorruptions 1.1.2 work on numpy 2 and scikit-image 0.26.

imagecorruptions 1.1.2 breaks in four places on the versions this project pins:

- `gaussian_blur` and `glass_blur` pass `multichannel=True` to `skimage.filters.gaussian`,
  which scikit-image 0.19 deprecated and 0.21 removed in favour of `channel_axis`.
- `fog` calls `plasma_fractal`, which allocates with `np.float_`, removed in numpy 2.0.
- The module imports `pkg_resources`, which setuptools 82 removed.
- `impulse_noise` calls `skimage.util.random_noise` without `rng`, so scikit-image draws fresh
  OS entropy and the output cannot be reproduced from a seed.

The package is neither forked nor modified. Each broken function is re-created from the
library's own code object with a patched copy of its module globals (`_rebind`), so the
algorithm stays the library's and only the missing name is swapped. `CORRUPTION_FUNCTIONS` is
the repaired table; the library's `corruption_dict` is left as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import skimage.filters
import skimage.util

from pipeline.ood.glass_blur import glass_blur_fast

__all__ = ["CORRUPTION_FUNCTIONS", "glass_blur_reference", "load_imagecorruptions"]

log = logging.getLogger(__name__)

_SETUPTOOLS_HINT = (
    "imagecorruptions 1.1.2 imports pkg_resources, which setuptools 82 removed; "
    "install a compatible setuptools with `pip install 'setuptools<82'`"
)


def _resource_filename(package: str, resource: str) -> str:
    """Stand-in for `pkg_resources.resource_filename`, the only function imagecorruptions uses.

    Resolves `resource` against the folder of the already imported module `package`.
    """
    module = sys.modules.get(package)
    origin = getattr(module, "__file__", None)
    if origin is None:
        raise ImportError(f"module {package!r} is not imported; {_SETUPTOOLS_HINT}")
    return os.path.join(os.path.dirname(origin), os.path.normpath(resource))


def _install_import_stubs() -> list[str]:
    """Register stand-ins for the modules imagecorruptions imports but the environment lacks.

    Returns the names registered, so that the caller can remove them after the import.
    """
    installed = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module("pkg_resources")
    except ImportError:
        stub = types.ModuleType("pkg_resources")
        stub.resource_filename = _resource_filename
        sys.modules["pkg_resources"] = stub
        installed.append("pkg_resources")
        log.info("pkg_resources is missing, so imagecorruptions gets a stand-in resource_filename")

    # scipy.ndimage.interpolation is deprecated and slated for removal in SciPy 2.0.
    if importlib.util.find_spec("scipy.ndimage.interpolation") is None:
        import scipy.ndimage

        stub = types.ModuleType("scipy.ndimage.interpolation")
        stub.map_coordinates = scipy.ndimage.map_coordinates
        sys.modules["scipy.ndimage.interpolation"] = stub
        installed.append("scipy.ndimage.interpolation")
    return installed


def load_imagecorruptions() -> types.ModuleType:
    """Import and return `imagecorruptions.corruptions`, with stand-ins for removed dependencies.

    The stand-ins are removed from `sys.modules` after the import, so that other code importing
    `pkg_resources` still gets an ImportError rather than a partial module.
    """
    if "imagecorruptions.corruptions" in sys.modules:
        return sys.modules["imagecorruptions.corruptions"]
    installed = _install_import_stubs()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            importlib.import_module("imagecorruptions")
            return sys.modules["imagecorruptions.corruptions"]
    except ImportError as error:
        if error.name == "imagecorruptions":
            hint = "install it with `pip install imagecorruptions==1.1.2`"
        else:
            hint = _SETUPTOOLS_HINT
        raise ImportError(f"importing imagecorruptions failed: {error}; {hint}") from error
    finally:
        for name in installed:
            sys.modules.pop(name, None)


def _rebind(function: Callable, **replacements: Any) -> Callable:
    """Return a copy of `function` whose module globals have `replacements` swapped in."""
    namespace = dict(function.__globals__)
    namespace.update(replacements)
    rebound = types.FunctionType(
        function.__code__, namespace, function.__name__, function.__defaults__, function.__closure__
    )
    rebound.__doc__ = function.__doc__
    return rebound


def _gaussian_accepting_multichannel(image, sigma=1.0, multichannel=None, **kwargs):
    """`skimage.filters.gaussian` that still accepts the removed `multichannel` argument."""
    if multichannel:
        kwargs["channel_axis"] = -1
    return skimage.filters.gaussian(image, sigma=sigma, **kwargs)


class _NumpyWithFloatUnderscore(types.ModuleType):
    """numpy, plus the `np.float_` alias (float64) that numpy 2.0 removed."""

    float_ = np.float64

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def _random_noise_from_global_rng(image, mode="gaussian", **kwargs):
    """`skimage.util.random_noise` seeded from numpy's global RNG, so `np.random.seed` fixes it."""
    kwargs.setdefault("rng", int(np.random.randint(0, 2**31 - 1)))
    return skimage.util.random_noise(image, mode=mode, **kwargs)


def _build_repaired_table() -> tuple[dict[str, Callable], Callable]:
    """Return the repaired name -> function table and the repaired (slow) reference glass_blur."""
    library = load_imagecorruptions()
    table = dict(importlib.import_module("imagecorruptions").corruption_dict)

    table["gaussian_blur"] = _rebind(
        library.gaussian_blur, gaussian=_gaussian_accepting_multichannel
    )
    reference_glass_blur = _rebind(library.glass_blur, gaussian=_gaussian_accepting_multichannel)
    table["glass_blur"] = glass_blur_fast

    plasma_fractal = _rebind(library.plasma_fractal, np=_NumpyWithFloatUnderscore("numpy"))
    table["fog"] = _rebind(library.fog, plasma_fractal=plasma_fractal)

    scikit_image = types.SimpleNamespace(
        util=types.SimpleNamespace(random_noise=_random_noise_from_global_rng)
    )
    table["impulse_noise"] = _rebind(library.impulse_noise, sk=scikit_image)
    return table, reference_glass_blur


CORRUPTION_FUNCTIONS, glass_blur_reference = _build_repaired_table()
"""`CORRUPTION_FUNCTIONS` maps each of the 19 names to a function `(PIL.Image, severity)` that
returns an array or image in [0, 255], drawing randomness from numpy's global RNG only.
`glass_blur_reference` is the library's pixel-loop glass_blur with only the
`multichannel` repair, kept for equivalence tests and the benchmark."""
