"""Speed measurements: each bench compares ours with a baseline in the same process (see common.py)."""
