"""Model architectures, the manifest and the registry that loads them."""
