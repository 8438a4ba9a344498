"""vjepa_scale.eval"""
