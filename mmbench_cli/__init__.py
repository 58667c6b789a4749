"""mmbench: MM1-style ablations and few-shot benchmarks for multimodal LLMs.

Importing the package is cheap (no torch); heavy modules are imported inside the commands that need them.
"""

__version__ = "0.1.0"
