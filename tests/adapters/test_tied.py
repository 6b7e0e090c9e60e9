"""Tied weights: residual inits, merge and merged state dicts refuse to write a shared tensor;
``untie_weights`` gives the adapted module its own copy and leaves the other one as it was."""

from __future__ import annotations

import copy
import types
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from lorax_core.adapters import (
    AdapterConfig,
    adapted_modules,
    inject,
    load_adapter,
    merge,
    merged_state_dict,
    save_adapter,
    unmerge,
    untie_weights,
)
from lorax_core.adapters.tied import shared_weights
from tests.adapters.reference import randomise_model


class TinyLM(nn.Module):
    """Embedding → Linear body → ``lm_head`` whose weight *is* the embedding's (tied)."""

    def __init__(self, vocab: int = 40, width: int = 12) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.embed = nn.Embedding(vocab, width)
        self.body = nn.Linear(width, width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
        self.lm_head.weight = self.embed.weight
        self.config = types.SimpleNamespace(tie_word_embeddings=True)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.tanh(self.body(self.embed(ids))))


IDS = torch.arange(40).reshape(4, 10)


def test_shared_weights_finds_ties_by_tensor_and_by_storage() -> None:
    model = TinyLM()
    assert shared_weights(model, ["lm_head", "body"]) == {"lm_head": ["embed.weight"]}
    view = TinyLM()
    view.lm_head.weight = nn.Parameter(view.embed.weight.detach()[:, :])  # a view, not the same
    assert shared_weights(view, ["lm_head"]) == {"lm_head": ["embed.weight"]}


@pytest.mark.parametrize("init", ["pissa", "nystrom"])
def test_residual_init_on_a_tied_head_is_refused(init: str) -> None:
    model = TinyLM()
    embedding = model.embed.weight.detach().clone()
    config = AdapterConfig(r=3, target_modules=["lm_head", "body"], init=init)
    with pytest.raises(ValueError, match=r"'lm_head' with 'embed\.weight'.*untie_weights=True"):
        inject(model, config)
    assert torch.equal(model.embed.weight, embedding)
    assert model.lm_head.weight is model.embed.weight  # still tied, nothing installed
    assert not adapted_modules(model)


@pytest.mark.parametrize("init", ["pissa", "nystrom"])
def test_untie_weights_keeps_the_embedding_and_the_output(init: str, tmp_path: Path) -> None:
    model = TinyLM()
    base = copy.deepcopy(model)
    expected = base(IDS)
    config = AdapterConfig(r=3, target_modules=["lm_head"], init=init, untie_weights=True)
    with pytest.warns(UserWarning, match=r"inject: untied 'lm_head' with 'embed\.weight'"):
        inject(model, config)
    assert torch.equal(model.embed.weight, base.embed.weight)  # bit for bit
    assert not shared_weights(model, ["lm_head"])
    assert model.config.tie_word_embeddings is False
    torch.testing.assert_close(model(IDS), expected, atol=1e-4, rtol=1e-5)
    randomise_model(model)
    trained = model(IDS)
    merge(model)
    assert torch.equal(model.embed.weight, base.embed.weight)
    torch.testing.assert_close(model(IDS), trained, atol=1e-4, rtol=1e-5)
    unmerge(model)
    save_adapter(model, tmp_path)
    fresh = TinyLM()
    with pytest.warns(UserWarning, match="untied"):  # the saved config unties on load too
        load_adapter(fresh, tmp_path)
    assert torch.equal(fresh.embed.weight, base.embed.weight)
    torch.testing.assert_close(fresh(IDS), trained, atol=1e-5, rtol=1e-5)


def test_merge_of_a_tied_head_is_refused_until_untied() -> None:
    model = TinyLM()
    embedding = model.embed.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default init reads the tied weight only: no warning
        inject(model, AdapterConfig(r=3, target_modules=["lm_head", "body"]))
    assert model.lm_head.base_layer.weight is model.embed.weight
    randomise_model(model)
    trained = model(IDS)
    for function in (merge, unmerge, merged_state_dict):
        with pytest.raises(ValueError, match=rf"^{function.__name__}: .*'lm_head' with 'embed"):
            function(model)
    assert torch.equal(model.embed.weight, embedding)
    assert not any(layer.merged for layer in adapted_modules(model).values())
    with pytest.warns(UserWarning, match="untie_weights: untied 'lm_head'"):
        assert untie_weights(model) == ["lm_head"]
    assert untie_weights(model) == []  # nothing is tied any more
    state = merged_state_dict(model)
    assert torch.equal(state["embed.weight"], embedding)
    head = adapted_modules(model)["lm_head"]
    torch.testing.assert_close(state["lm_head.weight"], embedding + head.delta_weight())
    merge(model)
    assert torch.equal(model.embed.weight, embedding)
    torch.testing.assert_close(model(IDS), trained, atol=1e-4, rtol=1e-5)


def test_weights_without_storage_are_tied_only_by_identity() -> None:
    # On the meta device no tensor has a storage address: ties are found by identity alone,
    # and untied weights are not all taken for one shared storage.
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    model[2].weight = model[0].weight
    assert shared_weights(model, ["0", "1", "2"]) == {"0": ["2.weight"], "2": ["0.weight"]}
