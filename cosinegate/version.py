__version__ = "0.1.0"
# Bumped whenever the checkpoint or export layout changes; loaders refuse other formats.
CHECKPOINT_FORMAT = 1
EXPORT_FORMAT = 1
