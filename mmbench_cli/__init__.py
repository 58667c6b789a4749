"""mmbench: MM1-style ablations and few-shot benchmarks for multimodal LLMs.

Importing the package is cheap (no torch); heavy modules are imported inside the commands that need them.
"""

__version__ = "0.1.0"

# lm-evaluation-harness finds `model="mm"` once lm_eval is imported (a stdlib import hook; lm_eval is not loaded).
from mmbench_cli.evaluate.lm_eval_hook import install as _install_lm_eval_hook  # noqa: E402

_install_lm_eval_hook()
