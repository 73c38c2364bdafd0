"""``ablate bench``: developer tooling that measures what the template costs against plain PyTorch.

bench.py         # the command: one subcommand per benchmark, figures as Markdown or JSON
side_by_side.py  # two sides in a process pair, taking turns: what every comparison runs on
overhead.py      # ``ablate fit`` vs a plain loop, same batches
throughput.py    # per architecture: images/s, memory, MFU
time_to_acc.py   # training time until the test accuracy reaches a target
data.py          # loader images/s vs training images/s
"""
