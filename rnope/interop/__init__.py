"""Interoperability with other libraries: Hugging Face ``cohere`` / ``cohere2`` / ``smollm3`` export, import of
those and of ``llama`` / ``mistral`` / ``qwen2`` / ``qwen3``; GGUF export (:mod:`.gguf`)."""

from .hf import export, import_hf, load_hf, read_hf_config
from .hf_config import from_hf_config, hf_layout, to_hf_config

__all__ = ["export", "from_hf_config", "hf_layout", "import_hf", "load_hf", "read_hf_config", "to_hf_config"]
