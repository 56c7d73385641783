"""One local Ray cluster for the integration tests that run in-process, and a local S3 server.

The S3 endpoint and test credentials are in the environment before Ray starts, so Ray's worker
processes (training workers writing checkpoints, markers, model exports) reach the same server.
"""

from __future__ import annotations

import os
import uuid

import pytest

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 for the whole session (stopped at its end)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in (*S3_ENV, "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE",
                                              "AWS_SHARED_CREDENTIALS_FILE")}
    empty = tmp_path_factory.mktemp("aws")
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL_S3=endpoint,
                      AWS_CONFIG_FILE=str(empty / "config"),
                      AWS_SHARED_CREDENTIALS_FILE=str(empty / "credentials"))
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    from tkre import storage

    name = f"tkre-{uuid.uuid4().hex[:12]}"
    storage.s3_client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    import ray

    # more logical CPUs than the 2 cores: Ray Data read tasks must not starve behind actors
    ray.init(num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()
