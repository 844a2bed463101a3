"""The `hydra/sweeper=dltrain_optuna` config node, stored when Hydra's plugin scan imports this module.
The node itself is dltrain's (dltrain/search.py), so composing a config needs no plugin import."""

from dltrain.search import register_sweeper_config

register_sweeper_config()
