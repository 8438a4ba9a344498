"""vjepa-scale: V-JEPA video pretraining at scale."""
__version__ = "0.1.0"
