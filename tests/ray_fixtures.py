"""The one Ray instance of a test session: 2 CPUs, no dashboard, a 1 GB object store.

Import the fixture into a test module (``from ray_fixtures import ray_session``) and request it.
It joins a session that another fixture already started (same process) rather than starting a
second one, and shuts down only what it started. Multi-node tests build their own
``ray.cluster_utils.Cluster`` in a subprocess (see tests/test_dub_cluster.py), so they never
disturb this instance.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray")
    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=int(1e9),
                 logging_level="WARNING", log_to_driver=True)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
