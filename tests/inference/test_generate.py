import pytest
import torch

from rnope import generate

from ..conftest import TINY, tiny_model

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
    tested in test_fast_paths); without the flags: fp32 and the automatic choice; --compile off: eager."""
    import importlib

    import rnope
    from rnope.cli import main
    from rnope.tokenizer import Tokenizer

    rnope.save(tmp_path / "ck", tiny_model("rnope-swa", vocab_size=259), Tokenizer.byte_level())
    gen_mod = importlib.import_module("rnope.inference")
    seen = []
    real = gen_mod.generate

    def spy(model, prompts, n, **kw):
        seen.append((model.embed_tokens.weight.dtype, model.embed_tokens.weight.device.type, kw["compile"]))
        return real(model, prompts, n, **{**kw, "compile": False})

    monkeypatch.setattr(gen_mod, "generate", spy)
    assert main(["generate", "--ckpt", str(tmp_path / "ck"), "--prompt", "hi", "--max-new-tokens", "3"]) == 0
    assert main(["generate", "--ckpt", str(tmp_path / "ck"), "--prompt", "hi", "--max-new-tokens", "3",
                 "--compile", "--dtype", "bfloat16", "--device", "cpu"]) == 0
    assert main(["generate", "--ckpt", str(tmp_path / "ck"), "--prompt", "hi", "--max-new-tokens", "3", "--compile", "off"]) == 0
    assert seen == [(torch.float32, "cpu", None), (torch.bfloat16, "cpu", True), (torch.float32, "cpu", False)]


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(temperature=-1.0), r"temperature must be >= 0 \(0 = greedy\), got -1.0"),
        (dict(temperature=-1), r"temperature must be >= 0 \(0 = greedy\), got -1.0"),
        (dict(temperature=float("nan")), r"temperature must be >= 0 \(0 = greedy\), got nan"),
        (dict(top_k=0), "top_k must be >= 1, got 0"),
        (dict(top_k=-3), "top_k must be >= 1, got -3"),
        (dict(top_k=True), "top_k must be an integer, got True"),
        (dict(top_k=2.5), "top_k must be an integer, got 2.5"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
        (dict(top_p=float("nan")), r"top_p must be in \(0, 1\], got nan"),
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1, got 0"),
        (dict(max_new_tokens=-2), "max_new_tokens must be >= 1, got -2"),
        (dict(max_new_tokens=2.0), "max_new_tokens must be an integer, got 2.0"),
    ],
)
def test_generate_refuses_sampling_arguments_instead_of_reinterpreting(kw, message):
    """A negative temperature is an error, not greedy; nothing is clipped or defaulted."""
    with pytest.raises(ValueError, match="^" + message + "$"):
        generate(tiny_model("rnope-swa"), [[1, 2, 3]], **{"max_new_tokens": 4, **kw})


def test_sample_refuses_negative_temperature():
    from rnope.inference import sample

    with pytest.raises(ValueError, match=r"^temperature must be >= 0 \(0 = greedy\), got -0.5$"):
        sample(torch.zeros(1, 8), temperature=-0.5)


def test_cli_and_api_refuse_sampling_arguments_with_the_same_words():
    from rnope.inference import check_sampling

    cases = [(4, -1.0, None, None), (4, 0.0, 0, None), (4, 0.0, None, 2.0), (0, 0.0, None, None)]
    for n, t, k, p in cases:
        with pytest.raises(ValueError) as api:
            check_sampling(n, t, k, p)
        with pytest.raises(ValueError) as cli:
            check_sampling(n, t, k, p, flags=True)
        name = str(api.value).split(" ")[0]
        assert str(cli.value) == "--" + name.replace("_", "-") + str(api.value)[len(name):]


def test_generate_past_max_seq_len_is_not_clipped():
    """The model bounds no position and the decode cache is sized per call: a prompt plus
    max_new_tokens beyond config.max_seq_len generates every token asked for (nothing to clip to)."""
    model = tiny_model("rnope-swa", max_seq_len=16)
    prompt = list(range(3, 15))
    out = generate(model, [prompt], 10, stop_ids=[])
    assert len(out[0]) == 10 and out[0] == _greedy_reference(model, prompt, 10)


def test_max_new_tokens_beyond_what_a_cache_can_hold_is_refused_before_allocating(monkeypatch):
    """A KV cache that cannot fit in free memory is a ValueError naming the sizes, not an allocation
    that swaps the machine or dies in torch."""
    import importlib

    g = importlib.import_module("rnope.inference")
    model = tiny_model("rnope-swa")
    need = model.new_cache(2, 4 + 10**9, device="meta").nbytes
    monkeypatch.setattr(g, "free_memory", lambda device: 2**30)
    with pytest.raises(ValueError, match=rf"^a KV cache for 2 row\(s\) of {4 + 10**9} tokens \(prompt \+ max_new_tokens\) "
                                         rf"needs {need / 2**30:.1f} GiB, more than the 1.0 GiB free on cpu$"):
        g.generate(model, [[1, 2, 3, 4], [5, 6]], max_new_tokens=10**9)
    assert len(g.generate(model, [[1, 2, 3, 4]], max_new_tokens=2)[0]) == 2  # a cache that fits is unaffected


def test_cache_length_rounds_up_to_a_quarter_octave():
    from rnope.decode import cache_length

    assert [cache_length(n) for n in (1, 64, 65, 300, 2048, 2049, 2176, 2561, 32768 + 128)] == \
        [64, 64, 128, 320, 2048, 2560, 2560, 3072, 40960]
    for n in range(1, 5000, 37):  # never shorter, at most 1/4 (or 64 tokens) longer
        c = cache_length(n)
        assert n <= c <= max(n + 63, n * 5 // 4 + 1)


def test_automatic_compile_waits_until_the_step_has_decoded_enough_tokens(monkeypatch):
    """compile=None: eager until this step shape has decoded AUTO_COMPILE_TOKENS in the process (one
    long call or many short ones), compiled from then on; never for several rows on CPU."""
    import importlib

    dec_mod = importlib.import_module("rnope.decode")
    g = importlib.import_module("rnope.inference")
    monkeypatch.setattr(dec_mod, "_decoded", {})
    monkeypatch.setattr(dec_mod, "_warm", set())
    monkeypatch.setattr(dec_mod, "AUTO_COMPILE_TOKENS", 20)
    monkeypatch.setattr(dec_mod, "compile_available", lambda: True)
    asked = []

    class Spy(dec_mod.Decoder):  # records the choice; decodes eagerly (the compiled step is tested elsewhere)
        def __init__(self, model, cache, *, compile=False, cuda_graphs=False, weights=None):
            asked.append((compile, cache.max_seq_len))
            super().__init__(model, cache, compile=False)
            self.compiled = compile

    monkeypatch.setattr(g, "Decoder", Spy)
    model = tiny_model("rnope-swa")
    prompt = list(range(3, 13))  # 10 tokens + 8 new: cache 18 eager, 64 when compiled
    want = _greedy_reference(model, prompt, 8)
    outs = [g.generate(model, [prompt], 8) for _ in range(4)]
    assert all(o == [want] for o in outs)
    # 7 decode steps per call: 7, 14 < 20 (eager); the third call would reach 21 -> compiled, then warm
    assert asked == [(False, 18), (False, 18), (True, 64), (True, 64)]
    assert g.generate(model, [prompt], 8, compile=False) == [want] and asked[-1] == (False, 18)
    assert g.generate(model, [prompt, prompt], 8) == [want, want] and asked[-1] == (False, 18)  # CPU, 2 rows
    assert g.generate(model, [prompt], 100)[0] == _greedy_reference(model, prompt, 100)
    assert asked[-1] == (True, 128)  # one long generation repays the compile by itself
