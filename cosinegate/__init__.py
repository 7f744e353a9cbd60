"""CosineGate Edge: train dynamic-routing ResNets, export them with real `If` branches, run them on MCUs."""
from cosinegate.version import __version__

__all__ = ["__version__"]
