"""The Ray Serve application: `serve run serve/config.yaml` from the repository root."""
