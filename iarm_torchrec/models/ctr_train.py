"""The training wrapper shared by every CTR model: log loss (paper Eq. 13)."""

import re
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import nn
from torchrec.datasets.utils import Batch


PRECISIONS = ("fp32", "bf16", "fp16")
"""The dense arches' compute precisions (:class:`CTRTrain`'s ``precision``)."""
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CPUINFO = Path("/proc/cpuinfo")


def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU
    with AVX512-BF16 or AMX (the ``avx512_bf16`` / ``amx_bf16`` flags of Linux's ``/proc/cpuinfo``;
    elsewhere False). Without them CPU autocast emulates bf16 and runs slower than fp32."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        cpuinfo = CPUINFO.read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None


def resolve_precision(precision: str, device_type: str) -> str:
    """``precision`` as :class:`CTRTrain` takes it: ``auto`` becomes ``bf16`` where
    :func:`native_bf16` holds and ``fp32`` elsewhere; the others stay as they are.

    Example::

        >>> resolve_precision("fp32", "cpu")
        'fp32'
    """
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device_type) else "fp32"


def check_precision(precision: str, device: str = "") -> None:
    """Refuse an unknown precision, and ``fp16`` on CPU (``device`` ``cpu``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device == "cpu":
        raise ValueError(
            "precision fp16 is for CUDA: CPU autocast to float16 has no fast kernels here; use bf16 on CPU "
            "(AVX512-BF16/AMX hardware) or fp32"
        )


class CTRTrain(nn.Module):
    """Wraps any ``forward(dense_features, sparse_features) -> B logits`` model for training.

    The loss is Eq. 13's log loss on ``sigmoid(logit)``, computed stably from logits by
    ``BCEWithLogitsLoss``. The outputs follow ``torchrec.models.dlrm.DLRMTrain`` so that
    TorchRec's train pipelines can drive it.

    Args:
        model: a CTR model returning ``B`` logits.
        precision: ``fp32`` (the default: everything in float32), or ``bf16`` / ``fp16``: the
            model's forward runs under ``torch.autocast`` in that type (the dense arches'
            matrix products; embedding lookups and FBGEMM's kernels stay float32, and the CPU
            attention kernel takes and returns bf16, multiplying in bf16 where the CPU has
            AVX512-BF16 and in float32 elsewhere), while the
            parameters (master weights), the logits and the loss stay float32. ``fp16`` is for
            CUDA only (CPU autocast has no float16 benefit).
        device_type: where the model will run (``cpu`` or ``cuda``), for ``torch.autocast``;
            given up front because TorchRec's pipeline traces ``forward`` with ``torch.fx``,
            where the batch's device is not known. Default: ``cuda`` when available.

    Example::

        >>> from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
        >>> from torchrec.datasets.utils import Batch
        >>> from iarm_torchrec.models.iarm import IARM
        >>> ebc = EmbeddingBagCollection(tables=[
        ...     EmbeddingBagConfig(name="t_u", embedding_dim=4, num_embeddings=10, feature_names=["u"])])
        >>> train = CTRTrain(IARM(ebc, dense_in_features=1, user_feature_names=["u"]))
        >>> batch = Batch(dense_features=torch.rand(2, 1), labels=torch.tensor([0.0, 1.0]),
        ...     sparse_features=KeyedJaggedTensor.from_lengths_sync(
        ...         keys=["u"], values=torch.tensor([3, 7]), lengths=torch.tensor([1, 1])))
        >>> loss, (_, logits, labels) = train(batch)
        >>> loss.requires_grad, logits.shape
        (True, torch.Size([2]))
    """

    def __init__(self, model: nn.Module, precision: str = "fp32", device_type: Optional[str] = None) -> None:
        super().__init__()
        self.device_type: str = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
        check_precision(precision, self.device_type)
        self.model: nn.Module = model
        self.loss_fn: nn.Module = nn.BCEWithLogitsLoss()
        self.precision: str = precision

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """
        Args:
            batch: ``dense_features`` ``B x N``, ``sparse_features`` KJT, ``labels`` ``B``.

        Returns:
            ``(loss, (loss, logits, labels))``, the inner three detached.
        """
        if self.precision == "fp32":
            logits = self.model(batch.dense_features, batch.sparse_features)
        else:
            with torch.autocast(self.device_type, dtype=AUTOCAST_DTYPES[self.precision]):
                logits = self.model(batch.dense_features, batch.sparse_features)
            logits = logits.float()
        loss = self.loss_fn(logits, batch.labels.float())
        return loss, (loss.detach(), logits.detach(), batch.labels.detach())
