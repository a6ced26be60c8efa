"""jointseg.training."""
