"""Every registered model (and every fusion it accepts) through forward, loss, backward and scoring."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rmm.config import PROTOCOLS, ModelConfig, build_model_config
from rmm.data.graph import TrainGraph
from rmm.errors import UnknownNameError
from rmm.models import MODELS, get_model_class, register
from rmm.models.base import DEFAULT_FUSION, BPRBatch, build_model
from rmm.models.layers import FUSIONS, build_fusion, propagate
from rmm.models.registry import registry_table

NUM_USERS, NUM_ITEMS, BATCH = 7, 11, 5
MISSING_ITEM = 4  # its feature rows are all zero in every modality (a failed extraction)


def _graph(seed: int = 0) -> TrainGraph:
    generator = torch.Generator().manual_seed(seed)
    keys = torch.unique(torch.randint(NUM_USERS * NUM_ITEMS, (30,), generator=generator))
    return TrainGraph(NUM_USERS, NUM_ITEMS, users=keys // NUM_ITEMS, items=keys % NUM_ITEMS)


def _features(count: int) -> dict[str, torch.Tensor]:
    """``count`` modalities of different widths, one item missing in all of them."""
    features = dict(list({"image": torch.randn(NUM_ITEMS, 6), "text": torch.randn(NUM_ITEMS, 4)}.items())[:count])
    for matrix in features.values():
        matrix[MISSING_ITEM] = 0.0
    return features


def _cases() -> list[tuple[str, str, int]]:
    """(model, fusion, number of modalities): ID-only models with none; content models with one modality, and
    with two under every fusion they accept (per-modality models: the default)."""
    cases = []
    for name, spec in sorted(MODELS.items()):
        if not spec.uses_features:
            cases.append((name, "concat", 0))
            continue
        fusions = spec.fusions or (DEFAULT_FUSION,)
        cases += [(name, fusions[0], 1)] + [(name, fusion, 2) for fusion in fusions]
    return cases


@pytest.mark.parametrize(("name", "fusion", "modalities"), _cases())
def test_model_forward_loss_backward_scores(name: str, fusion: str, modalities: int) -> None:
    torch.manual_seed(0)
    cls = get_model_class(name)
    features = _features(modalities)
    model = build_model(ModelConfig(name, features=tuple(features), fusion=fusion), _graph(), features)
    model.start_epoch(seed=0, epoch=1)
    batch = BPRBatch(torch.randint(NUM_USERS, (BATCH,)), torch.randint(NUM_ITEMS, (BATCH,)),
                     torch.randint(NUM_ITEMS, (BATCH,)))
    batch = BPRBatch(batch.users, torch.cat([batch.pos_items[:-1], torch.tensor([MISSING_ITEM])]), batch.neg_items)

    if cls.trainable:
        loss = model(batch)
        loss.backward()
        assert loss.shape == () and torch.isfinite(loss)
        grads = [p.grad for p in model.parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)  # DDP needs every one used
        assert any(g.abs().sum() > 0 for g in grads)
    else:  # fitted when built: nothing for an optimiser or DDP, and no loss to train
        assert not list(model.parameters())
        with pytest.raises(TypeError, match="training-free"):
            model(batch)
    score = model.scorer()
    scores = score(torch.tensor([0, 3, 6]))
    assert scores.shape == (3, NUM_ITEMS) and torch.isfinite(scores).all()
    assert torch.allclose(score(torch.tensor([3])), scores[1:2], atol=1e-6)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model.scorer()(torch.arange(NUM_USERS))).all()


def test_id_only_model_rejects_features_and_feature_model_needs_them() -> None:
    with pytest.raises(ValueError, match="ID-only"):
        build_model(ModelConfig("lightgcn", features=("image",)), _graph(), {"image": torch.randn(NUM_ITEMS, 3)})
    with pytest.raises(ValueError, match="needs content features"):
        build_model(ModelConfig("vbpr"), _graph(), {})
    with pytest.raises(ValueError, match="num_items"):
        build_model(ModelConfig("vbpr", features=("image",)), _graph(), {"image": torch.randn(NUM_ITEMS + 1, 3)})


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusion_output_shape(fusion: str) -> None:
    module = build_fusion(fusion, [6, 4], 8)
    assert module([torch.randn(5, 6), torch.randn(5, 4)]).shape == (5, 8)


def test_unknown_fusion_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="Available"):
        build_fusion("max", [3], 4)


def test_norm_adj_is_symmetric_normalised_and_safe_for_isolated_nodes() -> None:
    graph = TrainGraph(3, 2, users=torch.tensor([0, 0, 1]), items=torch.tensor([0, 1, 0]))  # user 2 isolated
    adj = graph.norm_adj().to_dense()
    degree = torch.tensor([2.0, 1.0, 0.0, 2.0, 1.0])
    expected = torch.zeros(5, 5)
    for u, i in [(0, 3), (0, 4), (1, 3)]:
        expected[u, i] = expected[i, u] = 1 / (degree[u] * degree[i]).sqrt()
    assert torch.allclose(adj, expected)
    assert graph.norm_adj() is graph.norm_adj()  # cached


@pytest.mark.slow  # gradcheck: finite differences per input entry
def test_propagation_gradient_matches_finite_differences() -> None:
    graph = _graph(seed=1)
    adj = graph.norm_adj().to(torch.float64)
    x = torch.randn(NUM_USERS + NUM_ITEMS, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e: propagate(adj, e, num_layers=2), (x,))
    dense = adj.to_dense()
    expected = (x + dense @ x + dense @ dense @ x) / 3
    assert torch.allclose(propagate(adj, x, num_layers=2), expected)


@pytest.mark.parametrize("name", [name for name in sorted(MODELS) if get_model_class(name).trainable])
def test_model_trains_under_bf16_autocast(name: str) -> None:
    """``train.precision: bf16`` autocasts the step; sparse propagation stays float32 inside (no bfloat16 sparse
    kernels), so every model's loss and gradients come out finite. CPU autocast stands in for the GPU's here."""
    torch.manual_seed(0)
    features = _features(2) if MODELS[name].uses_features else {}
    model = build_model(ModelConfig(name, features=tuple(features)), _graph(), features)
    model.start_epoch(seed=0, epoch=1)
    batch = BPRBatch(torch.randint(NUM_USERS, (BATCH,)), torch.randint(NUM_ITEMS, (BATCH,)),
                     torch.randint(NUM_ITEMS, (BATCH,)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(batch)
    loss.backward()

    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in model.parameters())


@pytest.mark.parametrize("fusion", FUSIONS)
def test_vbpr_batch_loss_equals_the_full_catalogue_loss(fusion: str) -> None:
    from rmm.models.base import EmbeddingRecommender

    torch.manual_seed(0)
    features = _features(2)
    model = build_model(ModelConfig("vbpr", features=tuple(features), fusion=fusion), _graph(), features)
    batch = BPRBatch(torch.tensor([0, 1, 1, 6]), torch.tensor([2, 2, 5, 10]), torch.tensor([3, 7, 2, 0]))
    assert torch.allclose(model.loss(batch), EmbeddingRecommender.loss(model, batch), atol=1e-6)


@pytest.mark.parametrize("name", [name for name in sorted(MODELS) if get_model_class(name).trainable])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_reset_parameters_initialises_every_weight(name: str, protocol: str) -> None:
    """``reset_parameters`` is a model's one init site: it draws every parameter again (fine-tuned features, as
    ``protocol: mmrec`` trains them, go back to the given values), and two models built under one seed start from
    the same values (no uninitialised memory is left by a submodule built without init)."""
    features = _features(2) if MODELS[name].uses_features else {}
    config = build_model_config({"name": name, "features": list(features)}, "model", protocol=protocol)
    torch.manual_seed(0)
    model = build_model(config, _graph(), features)
    initial = {key: value.clone() for key, value in model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(7.0)
    torch.manual_seed(1)
    model.reset_parameters()
    assert not [key for key, value in model.named_parameters() if (value == 7.0).all()]
    torch.manual_seed(0)
    again = build_model(config, _graph(), features).state_dict()
    assert all(torch.equal(again[key], value) for key, value in initial.items())


def test_every_registry_line_names_its_class_and_torch_free_hyperparameters() -> None:
    """A line's module registers the class bound to that line; its hyperparameters live in ``hparams/<name>.py``
    (importable without torch) and their defaults are valid."""
    for name, spec in MODELS.items():
        cls = get_model_class(name)
        assert cls.spec is spec and cls.__module__ == spec.module == f"rmm.models.{name}"
        assert dataclasses.is_dataclass(spec.config_class)
        assert spec.config_class.__module__ == f"rmm.models.hparams.{name}"
        assert isinstance(spec.config_class(), spec.config_class)
        assert set(spec.fusions) <= set(FUSIONS) and (spec.uses_features or not spec.fusions)


def test_unknown_and_duplicate_model_names_raise() -> None:
    with pytest.raises(UnknownNameError, match=r"Unknown model 'lightgnc'. Available: \[.*'lightgcn'"):
        get_model_class("lightgnc")
    with pytest.raises(UnknownNameError, match="Unknown model 'newmodel'"):
        register("newmodel")  # a class needs its registry line first
    lightgcn = get_model_class("lightgcn")
    with pytest.raises(KeyError, match="Duplicate model name 'lightgcn': already registered by LightGCN"):
        register("lightgcn")(type("OtherLightGCN", (lightgcn,), {}))
    assert get_model_class("lightgcn") is lightgcn
    spec = MODELS["lightgcn"]
    with pytest.raises(KeyError, match="Duplicate model name 'lightgcn' in the registry"):
        registry_table(spec, dataclasses.replace(spec, config_class=MODELS["bprmf"].config_class))
