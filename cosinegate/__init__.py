"""CosineGate Edge: train dynamic-routing ResNets, export them with real `If` branches, run them on MCUs."""
import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a 2-core machine with
# another process busy, a demo epoch at torch's default 2 threads took 57.6 s spinning and 4.0 s
# passive (6.1 s on 1 thread). Set OMP_WAIT_POLICY=ACTIVE to get the spinning back.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cosinegate.version import __version__  # noqa: E402

__all__ = ["__version__"]
