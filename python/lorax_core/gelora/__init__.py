"""GeLoRA: per-layer LoRA ranks from the intrinsic dimension of hidden states (docs/gelora.md).

Hidden states → IDs → plan:

>>> hidden = capture_hidden_states(model, batches, n_samples=2000)      # h_0 … h_L
>>> ids = lorax_core.id.estimate_layers(hidden, "twonn", bootstrap=20)  # d_0 … d_L
>>> plan = plan_ranks(ids, model, ["query", "value"])
>>> peft_model = peft.get_peft_model(model, plan.to_peft_config())

or all of it in one call, from a checkpoint, a loaded model or a hidden-states file:

>>> plan = profile("checkpoint/", "texts.jsonl").plan  # tokens pooling, rank-8 LoRA's budget

The ``lorax-profile`` command (:mod:`lorax_core.gelora.cli`) is a shell around :func:`profile`.
"""

from lorax_core.gelora.capture import POOLINGS, capture_hidden_states, pool_hidden_states
from lorax_core.gelora.plan import LayerProfile, ModulePlan, RankPlan, plan_ranks
from lorax_core.gelora.profiler import ProfileResult, profile
from lorax_core.gelora.states import HiddenStates, load_hidden_states, save_hidden_states

__all__ = [
    "POOLINGS",
    "HiddenStates",
    "LayerProfile",
    "ModulePlan",
    "ProfileResult",
    "RankPlan",
    "capture_hidden_states",
    "load_hidden_states",
    "plan_ranks",
    "pool_hidden_states",
    "profile",
    "save_hidden_states",
]
