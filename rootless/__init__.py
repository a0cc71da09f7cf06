"""A container engine for users without root: images, builds and runtime on top of fusefs."""

__version__ = "0.1.0"
