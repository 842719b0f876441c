"""Inference: a trained run as one self-contained file (:mod:`~iarm_torchrec.inference.export`)
and click probabilities for a raw file from it (:mod:`~iarm_torchrec.inference.predict`)."""
