import os

# The suite is the CPU suite (fp32 numbers, CPU kernels): on a GPU machine it hides the GPU from this
# process and the CLI subprocesses it starts, or training would pick CUDA and bf16 autocast. The GPU
# checks are benchmarks/gpu_check.py; RNOPE_TEST_GPU=1 keeps the GPU visible.
if os.environ.get("RNOPE_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

from rnope import ModelConfig, Transformer  # noqa: E402

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
