"""platypus-ray: the Platypus refinement recipe (curate, decontaminate, LoRA) on Ray."""

__version__ = "0.1.0"
