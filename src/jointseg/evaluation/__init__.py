"""jointseg.evaluation."""
