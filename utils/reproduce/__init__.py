"""The machinery behind reproduce.py: the plan of every run of the paper (plan), running it locally
or on Slurm (launch), and REPRODUCTION.md from the results (report)."""
