"""The lecture's exercises: starting files, their checks (check.py) and worked solutions."""
