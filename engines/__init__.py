"""Code that runs inside IPyParallel engine processes.

Nothing here imports from ``supervisor`` or ``web``: this package is shipped to
engine processes, possibly on other hosts.
"""
