"""Pure decision logic: plain functions over frozen dataclasses.

Nothing here performs I/O, reads a clock or draws random numbers; time is passed in. That is
what lets the rollout, scaling and healing logic be tested table-driven and model-checked.
"""
