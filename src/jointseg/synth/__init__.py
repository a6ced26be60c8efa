"""The synthetic pediatric joint MR generator behind ``jointseg synth`` (see docs/synth.md).

anatomy     joints, bones, labels; MuJoCo models posed by forward kinematics
voxelize    meshes (open ones too) to signed distance grids; fields: one grid per bone
growth      stature, growth plates, cartilage and marrow by age (CDC growth charts)
subject     every random choice of one subject, and the joints' MR protocols
geometry    child-to-model frame, the scan's voxel grid and its sub-slice grid
bones       posed bones on the grid; muscles, softtissue: muscles, tendons, outline, fat
phantom     tissue classes, fat fractions and labels; mr: MR signal, noise, bias, ghosts
synthesis   one subject end to end; generate: the study on disk; preview, quality
randomize   domain-randomized rendering of the same subjects (--randomize)
nonjoint    volumes that show no joint (noise, brain-like, abdomen-like): recognition checks
"""
