"""Inference-only model paths (last-position logits, the in-place block) against the training path."""

import pytest
import torch


from ..conftest import TINY, tiny_model

W = TINY["window"]


# ------------------------------------------------------------------------------------ last logits
@pytest.mark.parametrize("keep", [1, 3])
def test_logits_to_keep_is_the_tail_of_the_full_logits(keep):
    model = tiny_model("rnope-swa")
    tokens = torch.randint(0, TINY["vocab_size"], (2, 2 * W + 1))
    with torch.no_grad():
        full = model(tokens)
        tail = model(tokens, logits_to_keep=keep)
        cache = model.new_cache(2, 2 * W + 1)
        cached = model(tokens, cache=cache, logits_to_keep=keep)
    assert tail.shape == (2, keep, TINY["vocab_size"])
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="logits_to_keep"):
            model(tokens, logits_to_keep=bad)
    torch.testing.assert_close(tail, full[:, -keep:])
    torch.testing.assert_close(cached, full[:, -keep:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["rnope-swa", "smollm3", "qknorm"])
def test_inference_in_place_block_equals_training_path(preset):
    """Without autograd the block and the MLP accumulate in place; the logits are the same."""
    model = tiny_model(preset, window=40)
    tokens = torch.randint(0, TINY["vocab_size"], (2, 150))
    train_path = model(tokens)
    with torch.no_grad():
        infer_path = model(tokens)
    with torch.inference_mode():
        infer_mode = model(tokens)
    torch.testing.assert_close(infer_path, train_path.detach(), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(infer_mode, train_path.detach(), atol=2e-5, rtol=1e-5)


def test_backward_through_the_model_is_unchanged_by_the_fast_paths():
    """Training path (fresh attention) gradients equal the reference kernel's."""
    model = tiny_model("rnope-swa")
    tokens = torch.randint(0, TINY["vocab_size"], (2, 3 * W + 5))
    grads = {}
    for impl in ("auto", "reference"):
        model.zero_grad(set_to_none=True)
        model.attn_impl = impl
        model(tokens).square().mean().backward()
        grads[impl] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["auto"], grads["reference"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
