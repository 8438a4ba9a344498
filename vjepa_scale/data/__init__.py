"""vjepa_scale.data"""
