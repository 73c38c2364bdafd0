"""The studies: each paper's ablation table as configs, and the code that runs and reports them.

<name>/study.yaml, base.yaml, arms/*.yaml   # a study (study.py reads it)
sweep.py        # ``ablate sweep``: every arm x seed, each run in its own folder
fingerprint.py  # what decides a run's result, and the hash its folder is checked against
report.py       # ``ablate report``: the study's numbers next to the paper's
slurm.py        # ``ablate slurm``: an sbatch script for one config, a job array for a study
"""
