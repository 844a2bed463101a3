"""Model families. Each registers a builder taking plain arguments and shapes, never a config.

Every builder receives ``in_shape`` (one example's shape: ``(C, H, W)`` for images, ``(T, F)``
for sequences, ``(F,)`` for tables) and ``out_features`` from the data and task; its other
keyword parameters are the model's config keys (``configs/model/<name>.yaml``).
"""

from dltrain.registry import Registry

MODELS = Registry("model")
