"""dltrain's Optuna sweeper for Hydra: `dltrain -m hparams_search=NAME` (see dltrain/search.py)."""
