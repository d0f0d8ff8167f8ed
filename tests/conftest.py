import os
import re

# The suite is the CPU suite (fp32 numbers, CPU kernels): on a GPU machine it hides the GPU from this
# process and the CLI subprocesses it starts, or training would pick CUDA and bf16 autocast. The GPU
# checks are benchmarks/gpu_check.py; RNOPE_TEST_GPU=1 keeps the GPU visible.
if os.environ.get("RNOPE_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

from rnope import ModelConfig, Transformer  # noqa: E402
from rnope.tasks import get_task  # noqa: E402

TINY = dict(vocab_size=61, n_layer=4, d_model=32, n_head=4, n_kv_head=2, d_ff=64, max_seq_len=256, window=8, chunk_size=8)
CORE_PRESETS = ["rnope-swa", "rope", "nope", "qknorm", "rnope", "swa"]


def tiny_model(preset: str, seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.from_preset(preset, **{**TINY, **overrides}))
    # larger weights than the init so attention is far from uniform and bugs show
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3 if "embed" not in name else 1.0)
    return model.eval()


def left_padded_rows(lens: list[int], extra: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Rows of ``n + extra`` random tokens, right-aligned into one left-padded batch: ``(rows, tokens, mask)``."""
    T = max(lens) + extra
    rows = [torch.randint(0, TINY["vocab_size"], (n + extra,)) for n in lens]
    tokens = torch.zeros(len(lens), T, dtype=torch.long)
    mask = torch.zeros(len(lens), T, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, T - len(r) :] = r
        mask[i, T - len(r) :] = 1
    return rows, tokens, mask


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster, and immune to OpenMP spinning on a busy machine.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _fp32_deterministic():
    torch.manual_seed(0)
    yield


# ---------------------------------------------------------------- synthetic-task helpers (tasks, family, ruler)
_TOK = re.compile(r"\w+|[^\w\s]+")


def wp_encode(s: str) -> list[int]:
    """Word/punctuation tokenizer: a cheap stand-in for BPE (about one token per word)."""
    return [len(t) for t in _TOK.findall(s)]


def byte_encode(s: str) -> list[int]:
    return list(s.encode())


EVAL_ESSAY = [
    "Lighthouses were once tended by keepers who lived at the foot of the tower. Every evening the keeper climbed "
    "the stairs to light the lamp. On stormy nights the work went on until dawn. Fog was the hardest enemy, because "
    "no light could pierce it. Horns and bells were added so that ships could hear the coast when they could not see "
    "it. Later, electric lamps and clockwork made the keeper less needed.",
    "Today most towers run on their own and are checked only a few times a year. Some have become museums where "
    "visitors climb the same worn steps. Sailors still read their charts with care near rocky shores. A single light "
    "can mean the difference between a safe return and a wreck. The lens of a tower focuses the beam into a narrow "
    "ray. Each tower flashes in its own rhythm so that sailors can tell them apart.",
]
TRAIN_ESSAY = [
    "Bread begins with flour, water, salt and yeast. The baker mixes them and lets the dough rest so the gluten can "
    "form. After a long rise the dough is shaped into loaves. A hot oven sets the crust within minutes, and the "
    "kitchen fills with warmth. Steam keeps the surface soft long enough for the loaf to expand.",
    "Sourdough uses a starter of natural yeast instead of a packet from the shop. Bakers feed their starters daily, "
    "as one might feed a pet. Rye flour makes a denser crumb than wheat. In many towns the bakery opens before "
    "sunrise. Loaves cool on racks before they are sliced.",
]
ESSAYS = {"eval": EVAL_ESSAY, "train": TRAIN_ESSAY}


def make(task: str, seed: int, length: int, depth: float | None, split: str = "eval", encode=wp_encode):
    return get_task(task)(seed, length, depth, encode=encode, split=split, essay=ESSAYS[split])


def sharp_random_model(preset: str, shape: dict, seed: int = 0, **overrides) -> Transformer:
    """Random weights large enough (std 0.3, embeddings 1.0, norms 1±0.2) that attention is sharp:
    parity tests then compare logits that differ between positions and layers."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.from_preset(preset, **{**shape, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
            else:
                p.normal_(0, 1.0 if "embed" in name else 0.3)
    return model.eval()
