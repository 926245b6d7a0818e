"""Prefect caching for data stages: keyed on the input's content hash, the stage config and the code.

``INPUTS`` covers the input :class:`~tasks.core.DatasetRef` (its uri carries its content digest, its sha256
the whole content) and the stage's own config; ``TASK_SOURCE`` invalidates the cache when the stage's code
changes. Results persist under ``PREFECT_HOME`` so a second run in a new process hits the cache.
"""

from prefect.cache_policies import INPUTS, TASK_SOURCE

DATA_STAGE_CACHE = INPUTS + TASK_SOURCE
