"""One local Ray cluster for the integration tests that run in-process."""

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    # more logical CPUs than the 2 cores: Ray Data read tasks must not starve behind actors
    ray.init(num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()
