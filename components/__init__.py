"""TorchX components for iarm-torchrec.

Installed with the package and registered under the ``torchx.components`` entry point
(see ``pyproject.toml``), so ``torchx run iarm.train ...`` works from any directory;
``torchx run components/iarm.py:train ...`` works from the repository root as well.
"""
