"""Encoder (3D ViT), predictor and the JEPA objective; `compiled`: regional torch.compile (`model.compile`)."""
from vjepa_scale.models.jepa import JEPA, compute_targets, jepa_loss, make_target_encoder
from vjepa_scale.models.predictor import Predictor
from vjepa_scale.models.vit import Packed, VisionTransformer3D, set_activation_checkpointing

__all__ = ["JEPA", "Predictor", "VisionTransformer3D", "Packed",
           "compute_targets", "jepa_loss", "make_target_encoder", "set_activation_checkpointing"]
