"""Running containers: user namespaces, mounts, the process tree and the state kept on disk."""
