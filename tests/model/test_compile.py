"""The training forward + loss compiles to ONE graph (no graph break, no host read) for the batch
kinds pre-training sees, and the compiled step computes what the eager one does."""

from __future__ import annotations

import pytest
import torch

from mixvlp_ds.data.batch import model_inputs
from mixvlp_ds.model import MixVLP, ModelConfig

KINDS = {
    # name: (arch, has_image, has_text, pair)
    "paired": ("uwox", [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]),
    # image-only, text-only, re-paired and paired rows, and a padding row
    "mixed": ("uwox", [1, 0, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 1, 0]),
    "unit": ("unit", [1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0]),
    # model.pair_loss=batch: every image against every report (B x B logits)
    "mixed-batch-pairs": ("uwox", [1, 0, 1, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 1, 1]),
}


def model_and_batch(kind: str, batch_factory):
    arch, has_image, has_text, pair = KINDS[kind]
    pair_loss = "batch" if kind.endswith("batch-pairs") else "tuple"
    cfg = ModelConfig.preset("tiny", arch=arch, pair_loss=pair_loss)
    torch.manual_seed(0)
    model = MixVLP(cfg).train()
    batch = batch_factory(cfg, len(has_image), has_image=[bool(x) for x in has_image],
                          has_text=[bool(x) for x in has_text], pair=[float(x) for x in pair])
    return model, model_inputs(batch, "cpu")


def loss_of(model):
    return lambda batch: model(batch)["loss"]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_training_forward_has_no_graph_break(kind, batch_factory):
    model, batch = model_and_batch(kind, batch_factory)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(loss_of(model))(batch)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.parametrize("kind", ["mixed", "unit", "mixed-batch-pairs"])
def test_fullgraph_compiled_step_equals_eager(kind, batch_factory):
    model, batch = model_and_batch(kind, batch_factory)
    eager = model(batch)
    eager["loss"].backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager")
    out = compiled(batch)  # fullgraph=True raises on any graph break
    out["loss"].backward()
    for key in ("loss", "L_txt", "L_img", "L_co", "n_txt", "n_img", "n_co"):
        assert torch.allclose(out[key], eager[key], rtol=1e-5, atol=1e-6), key
    again = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(again) == len(grads)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(again, grads, strict=True))
