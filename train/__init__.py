"""Training: the CosineGate model, its gate math, data loaders and `cg-train`."""
