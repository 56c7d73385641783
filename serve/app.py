"""Ray Serve entry point: `import_path: serve.app:app` in serve/config.yaml.

    TKRE_ROOT=runs/demo serve run serve/config.yaml       # local, blocks; Ctrl-C stops it
    serve deploy serve/config.yaml                         # onto a running cluster

`app` is an application builder: Serve calls it with the config's `args` (root, batching,
limits; see tkre.extract.deployment.AppArgs). The deployment itself lives in
tkre.extract.deployment, so it is part of the installed package and every worker imports it the
same way.
"""

from tkre.extract.deployment import ExtractorDeployment, api, app

__all__ = ["ExtractorDeployment", "api", "app"]
