"""A two-sample toy batch for the models' docstring examples.

Example::

    >>> ebc, dense, kjt = toy_inputs()
    >>> [c.name for c in ebc.embedding_bag_configs()], dense.shape, kjt.keys()
    (['t_user', 't_item'], torch.Size([2, 2]), ['user', 'item'])
"""

from typing import Sequence, Tuple

import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor


def toy_inputs(
    embedding_dim: int = 8, fields: Sequence[str] = ("user", "item"), dense_in_features: int = 2
) -> Tuple[EmbeddingBagCollection, torch.Tensor, KeyedJaggedTensor]:
    """One 10-row table ``t_<field>`` per field, a ``2 x dense_in_features`` dense batch and a
    KJT with one value per field and sample."""
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name=f"t_{f}", embedding_dim=embedding_dim, num_embeddings=10, feature_names=[f])
            for f in fields
        ]
    )
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=list(fields),
        values=torch.arange(2 * len(fields)) % 10,
        lengths=torch.ones(2 * len(fields), dtype=torch.int32),
    )
    return ebc, torch.rand(2, dense_in_features), kjt
