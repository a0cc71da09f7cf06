"""``rootless build``: Dockerfiles parsed (``parser``), their steps run and cached (``builder``, ``cache``)."""
