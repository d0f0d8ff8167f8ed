import pytest
import torch

from rnope import generate

from .conftest import TINY, tiny_model

W = TINY["window"]


@torch.no_grad()
def _greedy_reference(model, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt) :]


@pytest.mark.parametrize("preset", ["rnope-swa", "rope", "swa"])
def test_greedy_equals_uncached_argmax_batched_with_padding(preset):
    model = tiny_model(preset)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 61, (n,), generator=g).tolist() for n in (W - 1, 3 * W + 5, 1)]
    out = generate(model, prompts, 2 * W + 2)
    for p, o in zip(prompts, out):
        assert o == _greedy_reference(model, p, 2 * W + 2)


def test_stop_ids_and_callback():
    model = tiny_model("rnope-swa")
    prompt = [5, 6, 7]
    ref = _greedy_reference(model, prompt, 12)
    stop = ref[4]
    seen = []
    out = generate(model, [prompt], 12, stop_ids=[stop], callback=lambda step, toks: seen.append(toks[0]))
    assert out[0] == ref[: ref.index(stop) + 1]
    assert seen == out[0]


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model = tiny_model("rope")
    a = generate(model, [[1, 2, 3]], 10, temperature=1.0, seed=7)
    b = generate(model, [[1, 2, 3]], 10, temperature=1.0, seed=7)
    c = generate(model, [[1, 2, 3]], 10, temperature=1.0, seed=8)
    assert a == b and a != c
    assert generate(model, [[1, 2, 3]], 10, temperature=1.0, top_k=1, seed=3) == generate(model, [[1, 2, 3]], 10)
    assert generate(model, [[1, 2, 3]], 10, temperature=0.7, top_p=1e-6, seed=3) == generate(model, [[1, 2, 3]], 10)


@pytest.mark.parametrize(
    "prompts,message",
    [
        ([], "prompts is empty: give at least one prompt"),
        ([[1, 2], []], "prompt 1 is empty: every prompt needs at least one token"),
        ([[1, 99]], r"prompt 0 has token id 99 outside the vocabulary \[0, 61\)"),
    ],
)
def test_generate_bad_input(prompts, message):
    with pytest.raises(ValueError, match="^" + message + "$"):
        generate(tiny_model("rnope-swa"), prompts, 4)


def test_cli_generate_passes_device_dtype_and_compile(tmp_path, monkeypatch, capsys):
    """``rnope generate --compile --dtype bfloat16`` loads the model in that dtype on the picked
    device and asks generate() for a compiled decode step (whose equality with the eager step is
    tested in test_fast_paths); without the flags: fp32, eager."""
    import importlib

    import rnope
    from rnope.cli import main
    from rnope.tokenizer import Tokenizer

    rnope.save(tmp_path / "ck", tiny_model("rnope-swa", vocab_size=259), Tokenizer.byte_level())
    gen_mod = importlib.import_module("rnope.generate")  # the module (``rnope.generate`` is also the function)
    seen = []
    real = gen_mod.generate

    def spy(model, prompts, n, **kw):
        seen.append((model.embed_tokens.weight.dtype, model.embed_tokens.weight.device.type, kw["compile"]))
        return real(model, prompts, n, **{**kw, "compile": False})

    monkeypatch.setattr(gen_mod, "generate", spy)
    assert main(["generate", "--ckpt", str(tmp_path / "ck"), "--prompt", "hi", "--max-new-tokens", "3"]) == 0
    assert main(["generate", "--ckpt", str(tmp_path / "ck"), "--prompt", "hi", "--max-new-tokens", "3",
                 "--compile", "--dtype", "bfloat16", "--device", "cpu"]) == 0
    assert seen == [(torch.float32, "cpu", False), (torch.bfloat16, "cpu", True)]
