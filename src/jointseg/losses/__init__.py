"""jointseg.losses."""
