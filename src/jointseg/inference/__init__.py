"""jointseg.inference."""
