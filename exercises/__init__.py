"""Workbooks a learner completes, and the checker that grades them: `python -m exercises check --help`."""
