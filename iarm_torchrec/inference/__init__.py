"""Inference: a trained run as one self-contained file (:mod:`~iarm_torchrec.inference.export`)
and click probabilities for a raw file from it (:mod:`~iarm_torchrec.inference.predict`)."""

# rows per forward pass of ``iarm predict``: at d' = 32 a CPU forward costs per row 1.5x more at
# 2048 rows and 1.8x at 4096 than at 256-1024 (its B x M x 3Hd' projections pass 32 MB, beyond the
# caches and glibc's largest reused block, so each call maps and faults in fresh pages;
# docs/performance.md). A plain constant here, so that the CLI's parser needs no torch.
SCORING_BATCH_SIZE = 1024
