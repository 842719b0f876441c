"""IARM against the paper, equation by equation (Eq. 3-13).

Every check compares the model with a naive reference written here with explicit Python loops
over samples, fields and heads, reading the module's own weights, in float64. The reference
knows only the paper's formulas and where each weight lives:

* tables: ``ebc.embedding_bags[<table>].weight`` (one row per value);
* ``v_m``: ``embedding_arch.dense_embedding[m]``;
* interest MLP: the ``torch.nn.Linear`` layers of ``interest_arch``, in order;
* fused attention weight ``qkv.weight`` (``3 H d' x d``) is ``[W_Query; W_Key; W_Value]``,
  each ``H`` blocks of ``d'`` rows, one per head; ``residual.weight`` is ``W_Res``;
* ``output_arch.linear`` is ``w, b`` of Eq. 12.
"""

import math
from typing import Dict, List, Sequence, Tuple

import pytest
import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from iarm_torchrec.models.ctr_train import CTRTrain
from iarm_torchrec.models.iarm import IARM
from iarm_torchrec.modules.field_embedding import FieldEmbeddingArch
from iarm_torchrec.modules.interacting import (
    InteractingLayer,
    head_views,
    matmul_attention,
    multi_head_attention,
    sdpa_attention,
)

Sample = Dict[str, List[int]]  # field name -> the sample's values
Vector = torch.Tensor

ATOL = 1e-5
D, H, HEAD_DIM = 4, 2, 3

# Three samples; "genres" is multi-hot: several values, one value, none.
SPARSE_KEYS = ["user", "item", "genres"]
SAMPLES: List[Sample] = [
    {"user": [1], "item": [7], "genres": [0, 2, 5]},
    {"user": [4], "item": [3], "genres": [4]},
    {"user": [9], "item": [0], "genres": []},
]
DENSE = torch.tensor([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]], dtype=torch.float64)
DENSE_NAMES = ["age", "price"]


# --------------------------------------------------------------------------- inputs and models


def make_kjt(samples: Sequence[Sample], keys: Sequence[str] = SPARSE_KEYS) -> KeyedJaggedTensor:
    """The samples as a KJT with ``keys`` in the given order (key-major, as TorchRec lays it out)."""
    values = [v for key in keys for s in samples for v in s[key]]
    lengths = [len(s[key]) for key in keys for s in samples]
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(keys), values=torch.tensor(values, dtype=torch.long), lengths=torch.tensor(lengths)
    )


def table(name: str, num_embeddings: int, multi_hot: bool = False) -> EmbeddingBagConfig:
    return EmbeddingBagConfig(
        name=f"t_{name}",
        embedding_dim=D,
        num_embeddings=num_embeddings,
        feature_names=[name],
        pooling=PoolingType.MEAN if multi_hot else PoolingType.SUM,
    )


def make_ebc(order: Sequence[str] = ("user", "item", "genres")) -> EmbeddingBagCollection:
    sizes = {"user": 10, "item": 8, "genres": 6}
    return EmbeddingBagCollection(tables=[table(n, sizes[n], multi_hot=n == "genres") for n in order])


def make_model(
    user_feature_names: Sequence[str] = ("price", "user"),
    ebc_order: Sequence[str] = ("user", "item", "genres"),
    **kwargs: object,
) -> IARM:
    torch.manual_seed(0)
    arch = dict(interest_layer_sizes=[7, 6, 5, 4], num_layers=2, num_heads=H, head_dim=HEAD_DIM)
    arch.update(kwargs)
    model = IARM(
        make_ebc(ebc_order),
        dense_in_features=len(DENSE_NAMES),
        user_feature_names=list(user_feature_names),
        dense_feature_names=DENSE_NAMES,
        multi_hot_feature_names=["genres"],
        **arch,  # type: ignore[arg-type]
    ).double()
    with torch.no_grad():  # make ReLU gates and biases non-trivial
        for p in model.parameters():
            p.uniform_(-0.8, 0.8)
    return model


# --------------------------------------------------------------------------- the naive reference


def table_rows(ebc: EmbeddingBagCollection) -> Dict[str, torch.Tensor]:
    """Feature name -> its table's weight (``V_i``, one row per value)."""
    return {
        name: ebc.embedding_bags[c.name].weight for c in ebc.embedding_bag_configs() for name in c.feature_names
    }


@torch.no_grad()
def ref_field_embeddings(
    arch: FieldEmbeddingArch, samples: Sequence[Sample], dense: torch.Tensor
) -> List[Dict[str, Vector]]:
    """Eq. 2-4 per sample: field name -> ``e_m``."""
    rows = table_rows(arch.embedding_bag_collection)
    out = []
    for b, sample in enumerate(samples):
        e: Dict[str, Vector] = {}
        for name in arch.sparse_feature_names:
            values = sample[name]
            acc = torch.zeros(arch.embedding_dim, dtype=torch.float64)
            for v in values:
                acc = acc + rows[name][v]
            e[name] = acc / len(values) if values else acc  # Eq. 3: mean of the values' vectors
        for j, name in enumerate(arch.dense_feature_names):
            e[name] = arch.dense_embedding[j] * dense[b, j]  # Eq. 4: v_m x_m
        out.append(e)
    return out


@torch.no_grad()
def ref_interest(model: IARM, e: Dict[str, Vector]) -> Vector:
    """Eq. 5-6: four ReLU layers over ``[u_1; ...; u_n]`` in the given user-field order."""
    z = torch.cat([e[name] for name in model.user_feature_names])
    linears = [m for m in model.interest_arch.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 4
    for lin in linears:
        z = torch.relu(lin.weight @ z + lin.bias)
    return z


@torch.no_grad()
def ref_interacting_layer(layer: InteractingLayer, e: List[Vector]) -> Tuple[List[Vector], List[List[List[float]]]]:
    """Eq. 7-11 for one sample's ``M`` field vectors; also returns ``alpha[h][m][k]``."""
    M = len(e)
    hd = layer.head_dim
    out: List[Vector] = []
    alphas = [[[0.0] * M for _ in range(M)] for _ in range(layer.num_heads)]
    for m in range(M):
        heads: List[Vector] = []
        if layer.qkv is not None:
            W = layer.qkv.weight
            for h in range(layer.num_heads):
                W_q = W[h * hd : (h + 1) * hd]
                W_k = W[layer.output_dim + h * hd : layer.output_dim + (h + 1) * hd]
                W_v = W[2 * layer.output_dim + h * hd : 2 * layer.output_dim + (h + 1) * hd]
                phi = [float(torch.dot(W_q @ e[m], W_k @ e[k])) for k in range(M)]  # Eq. 8, no scaling
                denom = sum(math.exp(p) for p in phi)
                tilde = torch.zeros(hd, dtype=torch.float64)
                for k in range(M):
                    alpha = math.exp(phi[k]) / denom  # Eq. 7
                    alphas[h][m][k] = alpha
                    tilde = tilde + alpha * (W_v @ e[k])  # Eq. 9
                heads.append(tilde)
            z = torch.cat(heads)  # Eq. 10
        else:
            z = torch.zeros(layer.output_dim, dtype=torch.float64)
        if layer.residual is not None:
            z = z + layer.residual.weight @ e[m]  # Eq. 11
        out.append(torch.relu(z))
    return out, alphas


@torch.no_grad()
def ref_logits(model: IARM, samples: Sequence[Sample], dense: torch.Tensor) -> Tuple[torch.Tensor, list]:
    """Eq. 3-12 end to end; returns logits ``B`` and ``alpha[layer][b][h][m][k]``."""
    logits = []
    all_alphas: list = [[] for _ in model.interacting_arch.layers]
    for b, e in enumerate(ref_field_embeddings(model.embedding_arch, samples, dense)):
        fields = [e[name] for name in model.field_names]
        for i, layer in enumerate(model.interacting_arch.layers):
            fields, alphas = ref_interacting_layer(layer, fields)
            all_alphas[i].append(alphas)
        parts = ([ref_interest(model, e)] if model.interest_arch is not None else []) + fields
        z = torch.cat(parts)  # [U; e_1^Res; ...; e_M^Res]
        lin = model.output_arch.linear
        logits.append(torch.dot(lin.weight[0], z) + lin.bias[0])  # Eq. 12 before sigma
    return torch.stack(logits), all_alphas


# --------------------------------------------------------------------------- Eq. 2-4


def test_eq3_multi_hot_is_mean_one_hot_is_row_empty_is_zero() -> None:
    model = make_model()
    arch = model.embedding_arch
    got = arch(DENSE, make_kjt(SAMPLES))
    rows = table_rows(arch.embedding_bag_collection)
    g = arch.field_names.index("genres")
    u = arch.field_names.index("user")
    # written out for the three cases, independent of the reference loop
    torch.testing.assert_close(got[0, g], (rows["genres"][0] + rows["genres"][2] + rows["genres"][5]) / 3)
    torch.testing.assert_close(got[1, g], rows["genres"][4])
    torch.testing.assert_close(got[2, g], torch.zeros(D, dtype=torch.float64))
    for b, s in enumerate(SAMPLES):
        torch.testing.assert_close(got[b, u], rows["user"][s["user"][0]])
    ref = ref_field_embeddings(arch, SAMPLES, DENSE)
    for b in range(len(SAMPLES)):
        for m, name in enumerate(arch.field_names):
            torch.testing.assert_close(got[b, m], ref[b][name], atol=ATOL, rtol=0)


def test_eq4_numerical_field_is_vector_times_value() -> None:
    arch = make_model().embedding_arch
    got = arch(DENSE, make_kjt(SAMPLES)).detach()
    assert got.shape == (3, 5, D)
    assert arch.field_names == ["user", "item", "genres", "age", "price"]
    for b in range(3):
        for j, name in enumerate(DENSE_NAMES):
            m = arch.field_names.index(name)
            expected = torch.tensor([float(arch.dense_embedding[j, d].detach()) * float(DENSE[b, j]) for d in range(D)])
            torch.testing.assert_close(got[b, m], expected.double(), atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- Eq. 5-6


def test_eq5_6_interest_is_four_relu_layers_over_user_fields_in_given_order() -> None:
    model = make_model(user_feature_names=("price", "user"))  # not the field order
    fields = model.embedding_arch(DENSE, make_kjt(SAMPLES))
    users = fields.index_select(1, model.user_field_index)
    got = model.interest_arch(users)
    assert got.shape == (3, 4)
    for b, e in enumerate(ref_field_embeddings(model.embedding_arch, SAMPLES, DENSE)):
        torch.testing.assert_close(got[b], ref_interest(model, e), atol=ATOL, rtol=0)
    # the order matters: swapping the user fields gives another U
    swapped = torch.cat([users[:, 1], users[:, 0]], dim=1).unflatten(1, (2, D))
    assert not torch.allclose(model.interest_arch(swapped), got)


# --------------------------------------------------------------------------- Eq. 7-11


@pytest.mark.parametrize(
    "use_attention,use_residual", [(True, True), (False, True), (True, False)], ids=["IARM", "IRM", "IARM-"]
)
def test_eq7_11_interacting_layers_match_per_head_reference(use_attention: bool, use_residual: bool) -> None:
    model = make_model(use_attention=use_attention, use_residual=use_residual)
    fields = model.embedding_arch(DENSE, make_kjt(SAMPLES))
    if use_attention:
        got, attention = model.interacting_arch.forward_with_attention(fields)
    else:
        got, attention = model.interacting_arch(fields), []
        with pytest.raises(ValueError, match="use_attention=False"):
            model.interacting_arch.forward_with_attention(fields)
    assert got.shape == (3, 5, H * HEAD_DIM)
    for b in range(3):
        e = list(fields[b].unbind(0))
        for i, layer in enumerate(model.interacting_arch.layers):  # stacked: each feeds the next
            e, alphas = ref_interacting_layer(layer, e)
            if use_attention:
                a = attention[i][b]  # H x M x M
                torch.testing.assert_close(a, torch.tensor(alphas, dtype=torch.float64), atol=ATOL, rtol=0)
                torch.testing.assert_close(a.sum(-1), torch.ones(H, 5, dtype=torch.float64))
        torch.testing.assert_close(got[b], torch.stack(e), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"use_attention": False}, {"use_residual": False}, {"layer_norm": True}],
    ids=["IARM", "IRM", "IARM-", "layer-norm"],
)
def test_eq11_backward_matches_out_of_place_reference_without_copying_the_gradient(kwargs: Dict[str, bool]) -> None:
    """The layer's in-place ReLU is on a tensor that is no view, so autograd adds no CopySlices
    node (which copies the gradient three times per layer), and its gradients are those of the
    out-of-place Eq. 7-11."""
    torch.manual_seed(0)
    layer = InteractingLayer(in_dim=D, num_heads=H, head_dim=HEAD_DIM, **kwargs).double()
    fields = torch.randn(4, 5, D, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 5, H * HEAD_DIM, dtype=torch.float64)
    out = layer(fields)
    pending, seen = [out.grad_fn], set()
    while pending:  # every node of the layer's backward graph
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        assert type(node).__name__ not in ("CopySlices", "AsStridedBackward0"), type(node).__name__
        pending.extend(next_node for next_node, _ in node.next_functions)
    got = torch.autograd.grad((out * weight).sum(), [fields, *layer.parameters()])

    pre = torch.zeros(4, 5, H * HEAD_DIM, dtype=torch.float64)
    if layer.qkv is not None:
        pre = pre + matmul_attention(layer.qkv(fields), H, HEAD_DIM)
    if layer.residual is not None:
        pre = pre + layer.residual(fields)
    if layer.layer_norm is not None:
        pre = layer.layer_norm(pre)
    want = torch.autograd.grad((torch.relu(pre) * weight).sum(), [fields, *layer.parameters()])
    torch.testing.assert_close(out, torch.relu(pre), atol=ATOL, rtol=0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0)


def test_eq8_score_is_unscaled_inner_product() -> None:
    """A scaled (1/sqrt(d')) softmax would differ: the check above is not vacuous."""
    model = make_model()
    layer = model.interacting_arch.layers[0]
    fields = model.embedding_arch(DENSE, make_kjt(SAMPLES))
    views = head_views(layer.qkv(fields), layer.num_heads, layer.head_dim)
    q, k = (torch.stack(per_head, dim=1) for per_head in list(zip(*views))[:2])  # B x H x M x d'
    scaled = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM), dim=-1)
    assert not torch.allclose(layer.attention_weights(fields), scaled, atol=1e-3)


def test_sdpa_and_matmul_attention_compute_the_same_eq7_to_10() -> None:
    """The CUDA path (SDPA, scale=1) and the CPU path (per-head bmm) are one function of the
    projections; on CPU the dispatcher takes the matmul path, which the references above check."""
    qkv = torch.randn(6, 7, 3 * H * HEAD_DIM, dtype=torch.float64)
    torch.testing.assert_close(sdpa_attention(qkv, H, HEAD_DIM), matmul_attention(qkv, H, HEAD_DIM), atol=ATOL, rtol=0)
    torch.testing.assert_close(multi_head_attention(qkv, H, HEAD_DIM), matmul_attention(qkv, H, HEAD_DIM))


# --------------------------------------------------------------------------- Eq. 12-13


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"use_interest": False}, {"num_layers": 0}, {"num_layers": 3}],
    ids=["IARM", "IARM*", "0-layers", "3-layers"],
)
def test_eq12_logit_is_w_dot_interest_and_residual_fields(kwargs: Dict[str, object]) -> None:
    model = make_model(**kwargs)
    got, attention = model.forward_with_attention(DENSE, make_kjt(SAMPLES))
    ref, alphas = ref_logits(model, SAMPLES, DENSE)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(model(DENSE, make_kjt(SAMPLES)), ref, atol=ATOL, rtol=0)
    assert len(attention) == len(alphas)
    for a, ref_a in zip(attention, alphas):
        torch.testing.assert_close(a, torch.tensor(ref_a, dtype=torch.float64), atol=ATOL, rtol=0)


def test_eq13_train_loss_is_mean_log_loss_of_sigmoid() -> None:
    model = make_model()
    labels = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    batch = Batch(dense_features=DENSE, sparse_features=make_kjt(SAMPLES), labels=labels)
    loss, (loss_d, logits, out_labels) = CTRTrain(model)(batch)
    ref, _ = ref_logits(model, SAMPLES, DENSE)
    total = 0.0
    for y, z in zip(labels.tolist(), ref.tolist()):
        p = 1.0 / (1.0 + math.exp(-z))
        total += -(y * math.log(p) + (1 - y) * math.log(1 - p))
    assert loss.item() == pytest.approx(total / 3, abs=ATOL)
    assert loss_d.item() == loss.item() and not loss_d.requires_grad
    torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)
    assert torch.equal(out_labels, labels)


# --------------------------------------------------------------------------- fields by name


def test_table_order_differs_from_kjt_key_order() -> None:
    model = make_model(ebc_order=("genres", "user", "item"))
    assert model.field_names == ["genres", "user", "item", "age", "price"]
    ref, _ = ref_logits(model, SAMPLES, DENSE)
    for keys in (["user", "item", "genres"], ["item", "genres", "user"]):
        torch.testing.assert_close(model(DENSE, make_kjt(SAMPLES, keys)), ref, atol=ATOL, rtol=0)


class PermutedEBC(EmbeddingBagCollection):
    """An EBC whose output KeyedTensor lists its keys in reverse order (as a sharded one may)."""

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        by_name = super().forward(features).to_dict()
        keys = list(reversed(list(by_name)))
        return KeyedTensor.from_tensor_list(keys, [by_name[k] for k in keys])


def test_field_embedding_reads_pooled_output_by_name_not_position() -> None:
    model = make_model()
    torch.manual_seed(0)
    permuted_ebc = PermutedEBC(tables=make_ebc().embedding_bag_configs())
    permuted_ebc.load_state_dict(model.embedding_arch.embedding_bag_collection.state_dict())
    kjt = make_kjt(SAMPLES)
    assert permuted_ebc(kjt).keys() == ["genres", "item", "user"]
    permuted = IARM(
        permuted_ebc,
        dense_in_features=2,
        user_feature_names=model.user_feature_names,
        dense_feature_names=DENSE_NAMES,
        multi_hot_feature_names=["genres"],
        interest_layer_sizes=[7, 6, 5, 4],
        num_layers=2,
        num_heads=H,
        head_dim=HEAD_DIM,
    ).double()
    permuted.load_state_dict(model.state_dict())
    torch.testing.assert_close(permuted(DENSE, kjt), model(DENSE, kjt), atol=ATOL, rtol=0)
    torch.testing.assert_close(permuted(DENSE, kjt), ref_logits(model, SAMPLES, DENSE)[0], atol=ATOL, rtol=0)
