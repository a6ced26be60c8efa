"""jointseg.synth."""
