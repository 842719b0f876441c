"""Inference: a trained run as one self-contained file (:mod:`~iarm_torchrec.inference.export`)
and click probabilities for a raw file from it (:mod:`~iarm_torchrec.inference.predict`)."""

# rows per forward pass of ``iarm predict``: with glibc's default malloc a CPU forward at d' = 32
# cost per row 1.5x more at 2048 rows and 1.8x at 4096 than at 256-1024 (its 30-60 MB
# intermediates were mapped fresh every batch); with the CLI's allocator setting
# (:mod:`iarm_torchrec.allocator`) 1024 and 4096 score a million rows equally fast, and 1024 keeps
# a third less memory (docs/performance.md). A plain constant here, so that the CLI's parser needs
# no torch.
SCORING_BATCH_SIZE = 1024
