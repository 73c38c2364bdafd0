"""Configs, runners and reports that reproduce the papers' ablation tables; the ``ablate`` CLI."""
