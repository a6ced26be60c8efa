"""jointseg.models."""
