"""The training engine: device and precision, the loop, checkpoints, logging, the run directory.

It takes built objects and plain dataclasses; it knows nothing of Hydra or the registries'
config files.
"""
