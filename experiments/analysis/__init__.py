"""Analysis tools the lectures draw, each an ``ablate`` subcommand on a registered network or a saved run.

- ``landscape``: loss surface along filter-normalised random directions (Li et al. 2018);
- ``lesion``: test error with residual units deleted (Veit et al. 2016);
- ``shapes``: per-layer output shape, receptive field, jump, parameters and multiply-adds;
- ``visualize``: first-layer filters and class activation maps (Zhou et al. 2016);
- ``zoo``: the registered networks, parameters and multiply-adds against the papers' counts.

``common`` loads a run (its ``config.yaml`` through the ``ablate fit`` parser, its checkpoint with
``torch.load(weights_only=True)``) and holds the data and output helpers they share.
"""
