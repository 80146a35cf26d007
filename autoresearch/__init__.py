"""autoresearch: overnight ML research on one GPU box.

An agent proposes one change to a recipe's train.py, the tool commits it, trains for a fixed
wall-clock budget, measures the metric with evaluation code the agent cannot touch, and keeps the
commit or reverts it. Everything is recorded in a SQLite ledger.
"""

__version__ = "0.1.0"
