"""vjepa_scale.hf"""
