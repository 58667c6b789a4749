"""Package data, read through :mod:`importlib.resources` so that a wheel install carries it.

What lives here: ``base.yaml`` (the documented default config, equal to ``config.Config()``), ``axes.yaml`` (the axis
presets of ``mm ablate`` and the MM1 claims ``mm report`` tests them against), ``evals/`` (the lm-eval text task
YAMLs and their dataset builder) and ``tasks/`` (the multimodal task YAMLs). A user's own files take precedence where
the commands say so (``./ablations/axes.yaml``, ``$MMBENCH_AXES``, ``--include-path``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mmbench_cli.errors import MMError


def resource_path(*parts: str) -> Path:
    """The file-system path of a packaged resource (``resource_path("evals")``, ``resource_path("axes.yaml")``).

    pip and uv always unpack wheels, so the package data is a real directory; lm-eval's ``--include_path`` needs one.
    A zipped install (zipimport) cannot give one and is refused with a one-line error.
    """
    node = resources.files(__name__).joinpath(*parts)
    path = Path(str(node))
    if not path.exists():
        raise MMError(f"packaged resource {'/'.join(parts)!r} is missing from {Path(str(resources.files(__name__)))}: "
                      "reinstall mmbench (a zipped install is not supported)")
    return path
