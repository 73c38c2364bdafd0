"""Everything above the networks, data and classifier, in rooms named for their jobs.

- ``cli/``: the ``ablate`` command (Lightning's subcommands and the tools table), the cache tool,
  and how an error becomes one line and an exit status. Nothing below imports it.
- ``presets/``, ``quickstart*.yaml``, ``fast_cifar10.yaml``, ``transfer/``: configs users name on
  the command line.
- ``studies/``: each paper's ablation table as configs (``<name>/``), and the runner, report and
  cluster submission that reproduce it.
- ``analysis/``: tools that look at networks and trained runs (zoo, shapes, landscape, lesion, visualize).
- ``benchmarks/``: developer tooling that measures the template against plain PyTorch.

The LightningCLI every room builds runs with is ``lightning_modules/ablate_cli.py``.
"""
