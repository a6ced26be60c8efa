"""jointseg.data."""
