"""Images: references, manifests, the registry client and the content-addressed store."""
