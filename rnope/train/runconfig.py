"""Run configuration: what to train, on what, for how long — and the stages of a run.

A run config is a YAML (or JSON) mapping read with ``yaml.safe_load``; every key is a field of
:class:`RunConfig`, ``model:`` holds :class:`~rnope.config.ModelConfig` overrides (RoPE / NoPE options
nested, ``model: {rope: {scaling: yarn, factor: 4}}``, or by their older flat names) and ``stages:`` a
list of :class:`Stage` mappings. Precedence: defaults < the resumed run's ``run.json`` < ``--config``
file < command-line flags. Example (``configs/pretrain_long.yaml``)::

    preset: rnope-swa
    stages:
      - {name: pretrain, steps: 300, seq_len: 256}
      - {name: long, steps: 100, seq_len: 1024, short_seq_len: 256, long_ratio: 0.25, rope_theta: 2000000}

The long-context stage mirrors the paper's SFT stage (arXiv 2501.18795 §2: 8k and 64k sequences
mixed 3:1, RoPE theta raised for the RoPE baselines): ``long_ratio`` of the *sequences* have
``seq_len`` tokens, the rest ``short_seq_len``; see :func:`rnope.train.stream.long_fraction` for how
micro-batches of equal token count realise that ratio. Each stage starts from the previous stage's
weights (and optimizer moments) and runs its own warm-up + cosine schedule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunConfig", "Stage", "load_run_file", "stage_model_configs"]

DISTRIBUTED = ("auto", "none", "ddp", "fsdp")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(where: str, name: str, v: Any, kind: str, lo: float | None = None, hi: float | None = None, *, lo_open=False) -> None:
    """Raise ``ValueError('<where>: <name> must be ...')`` unless ``v`` has the kind and range."""
    ok = _is_int(v) if kind == "integer" else _is_num(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v <= hi
    if not ok:
        rng = ""
        if lo is not None:
            rng = f" {'>' if lo_open else '>='} {lo:g}"
        if hi is not None:
            rng += f"{' and' if rng else ''} <= {hi:g}"
        raise ValueError(f"{where}{name} must be {'an' if kind == 'integer' else 'a'} {kind}{rng}, got {v!r}")



def _check_kinds(where: str, kinds) -> None:
    """One line naming the first unknown synthetic kind (else a bad name fails hours later, when first drawn)."""
    from ..tasks.synthetic import known_kinds

    known = known_kinds()
    bad = [k for k in kinds if k not in known]
    if bad:
        raise ValueError(f"{where}synthetic_kinds: unknown kind {bad[0]!r}; known: {', '.join(known)}")

@dataclass(frozen=True, kw_only=True)
class Stage:
    """One phase of a run. Optional fields fall back to the run's values."""

    name: str
    steps: int
    seq_len: int
    short_seq_len: int | None = None  # set (with long_ratio) to mix long and short sequences
    long_ratio: float | None = None  # fraction of sequences that have seq_len tokens
    rope_theta: float | None = None  # new RoPE theta from this stage on (same weights)
    lr: float | None = None
    min_lr: float | None = None
    warmup: int | None = None
    synthetic_ratio: float | None = None
    synthetic_kinds: tuple[str, ...] | None = None  # e.g. ["copy"] for an induction warm-up stage
    model: dict | None = None  # ModelConfig overrides from this stage on (e.g. a RoPE extension)

    def validate(self, where: str) -> None:
        if not isinstance(self.name, str) or not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"{where}name must be a non-empty word (letters, digits, - or _), got {self.name!r}")
        _check(where, "steps", self.steps, "integer", 1)
        _check(where, "seq_len", self.seq_len, "integer", 1)
        if (self.short_seq_len is None) != (self.long_ratio is None):
            raise ValueError(f"{where}short_seq_len and long_ratio must be given together")
        if self.short_seq_len is not None:
            _check(where, "short_seq_len", self.short_seq_len, "integer", 1)
            _check(where, "long_ratio", self.long_ratio, "number", 0, 1, lo_open=True)
            if self.short_seq_len >= self.seq_len or self.seq_len % self.short_seq_len:
                raise ValueError(
                    f"{where}short_seq_len {self.short_seq_len} must be smaller than seq_len {self.seq_len} and divide it "
                    "(long and short micro-batches hold the same number of tokens)"
                )
        if self.rope_theta is not None:
            _check(where, "rope_theta", self.rope_theta, "number", 0, lo_open=True)
        for k in ("lr", "min_lr"):
            if getattr(self, k) is not None:
                _check(where, k, getattr(self, k), "number", 0)
        if self.warmup is not None:
            _check(where, "warmup", self.warmup, "integer", 0)
        if self.synthetic_ratio is not None:
            _check(where, "synthetic_ratio", self.synthetic_ratio, "number", 0, 1)
        if self.synthetic_kinds is not None and (
            not self.synthetic_kinds or not all(isinstance(k, str) for k in self.synthetic_kinds)
        ):
            raise ValueError(f"{where}synthetic_kinds must be a non-empty list of task names")
        if self.synthetic_kinds is not None:
            _check_kinds(where, self.synthetic_kinds)
        if self.model is not None:
            if not isinstance(self.model, dict):
                raise ValueError(f"{where}model must be a mapping of model config overrides, got {type(self.model).__name__}")
            for k in ("n_layer", "d_model", "n_head", "n_kv_head", "d_ff", "vocab_size", "pattern", "block", "norm", "tie_embeddings"):
                if k in self.model:
                    raise ValueError(f"{where}model: {k!r} changes the weights' shapes or layout and cannot change between stages")

    @property
    def mixed(self) -> bool:
        return self.short_seq_len is not None

    @property
    def lengths(self) -> tuple[int, ...]:
        return (self.seq_len, self.short_seq_len) if self.mixed else (self.seq_len,)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything about a run except the model shapes (``preset`` + ``model`` overrides name those)."""

    preset: str | None = None
    model: dict = field(default_factory=dict)  # ModelConfig overrides
    # a checkpoint whose weights the run starts from (``--init``); its config replaces the preset and,
    # once the run is planned, ``model`` holds the whole resolved ModelConfig (so a resume needs neither)
    init: str | None = None
    data: str = "builtin"
    tokenizer: str = "byte"  # "byte" or a tokenizer.json path
    cache_dir: str | None = None  # token shard cache (default: $RNOPE_CACHE or OUT/data)
    val_fraction: float = 0.02
    seed: int = 0
    max_steps: int | None = None  # steps of the single stage, or a cap on the stages' total
    seq_len: int = 256
    batch_size: int = 16  # sequences per micro-batch per process (at seq_len)
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int | None = None  # default: 10% of each stage's steps
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    clip: float = 1.0  # 0 disables clipping
    save_every: int = 100
    keep: int = 3  # checkpoints kept
    eval_every: int = 50  # 0 disables periodic validation (the final one still runs)
    eval_batches: int = 4
    log_every: int | None = None  # steps between host syncs for logging (default: 1 on CPU, 10 on GPU)
    synthetic_ratio: float = 0.25  # fraction of training sequences that are synthetic retrieval documents
    synthetic_kinds: tuple[str, ...] = ("passkey", "niah_single", "niah_multikey")
    compile: bool = False
    distributed: str = "auto"
    stages: tuple[Stage, ...] = ()

    # ---- resolution ---------------------------------------------------------------------------
    def resolved_stages(self) -> tuple[Stage, ...]:
        """The stages to run: the configured ones, or one ``pretrain`` stage of max_steps (default 300)."""
        if self.stages:
            return self.stages
        return (Stage(name="pretrain", steps=self.max_steps or 300, seq_len=self.seq_len),)

    @property
    def total_steps(self) -> int:
        total = sum(s.steps for s in self.resolved_stages())
        return min(total, self.max_steps) if self.max_steps else total

    def validate(self, where: str = "") -> None:
        w = where
        for k in ("seed",):
            _check(w, k, getattr(self, k), "integer", 0)
        for k in ("seq_len", "batch_size", "grad_accum", "keep", "eval_batches"):
            _check(w, k, getattr(self, k), "integer", 1)
        for k in ("save_every", "eval_every"):
            _check(w, k, getattr(self, k), "integer", 0)
        for k in ("max_steps", "log_every"):
            if getattr(self, k) is not None:
                _check(w, k, getattr(self, k), "integer", 1)
        if self.warmup is not None:
            _check(w, "warmup", self.warmup, "integer", 0)
        _check(w, "lr", self.lr, "number", 0, lo_open=True)
        _check(w, "min_lr", self.min_lr, "number", 0)
        for k in ("weight_decay", "clip"):
            _check(w, k, getattr(self, k), "number", 0)
        for k in ("beta1", "beta2"):
            _check(w, k, getattr(self, k), "number", 0, 1)
        _check(w, "synthetic_ratio", self.synthetic_ratio, "number", 0, 1)
        _check(w, "val_fraction", self.val_fraction, "number", 0, 0.5, lo_open=True)
        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"{w}distributed must be one of {', '.join(DISTRIBUTED)}, got {self.distributed!r}")
        if self.init is not None and (not isinstance(self.init, str) or not self.init):
            raise ValueError(f"{w}init must be a checkpoint path, got {self.init!r}")
        if not isinstance(self.data, str) or not self.data:
            raise ValueError(f"{w}data must be a non-empty string, got {self.data!r}")
        if not isinstance(self.model, dict):
            raise ValueError(f"{w}model must be a mapping of model config overrides, got {type(self.model).__name__}")
        if not self.synthetic_kinds or not all(isinstance(k, str) for k in self.synthetic_kinds):
            raise ValueError(f"{w}synthetic_kinds must be a non-empty list of task names")
        _check_kinds(w, self.synthetic_kinds)
        names = set()
        for i, st in enumerate(self.stages):
            st.validate(f"{w}stages[{i}] ({st.name!r}): " if isinstance(st.name, str) else f"{w}stages[{i}]: ")
            if st.name in names:
                raise ValueError(f"{w}stages[{i}]: duplicate stage name {st.name!r}")
            names.add(st.name)

    # ---- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["synthetic_kinds"] = list(self.synthetic_kinds)
        d["stages"] = [{k: v for k, v in s.items() if v is not None} for s in d["stages"]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> "RunConfig":
        if not isinstance(d, dict):
            raise ValueError(f"{where}a run config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for k in d:
            if k not in known:
                raise ValueError(f"{where}unknown key {k!r} (known: {', '.join(sorted(known))})")
        d = _coerce_floats(cls, dict(d))
        if "stages" in d:
            d["stages"] = _parse_stages(d["stages"], where)
        if "synthetic_kinds" in d:
            kinds = d["synthetic_kinds"]
            d["synthetic_kinds"] = (kinds,) if isinstance(kinds, str) else tuple(kinds or ())
        if d.get("model") is None:
            d["model"] = {}
        return cls(**d)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def _parse_stages(raw: Any, where: str) -> tuple[Stage, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ValueError(f"{where}stages must be a list of mappings, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(Stage)}
    out = []
    for i, s in enumerate(raw):
        if not isinstance(s, dict):
            raise ValueError(f"{where}stages[{i}] must be a mapping, got {type(s).__name__}")
        for k in s:
            if k not in known:
                raise ValueError(f"{where}stages[{i}]: unknown key {k!r} (known: {', '.join(sorted(known))})")
        for k in ("name", "steps", "seq_len"):
            if k not in s:
                raise ValueError(f"{where}stages[{i}]: missing key {k!r}")
        s = _coerce_floats(Stage, dict(s))
        if isinstance(s.get("synthetic_kinds"), (list, str)):
            kinds = s["synthetic_kinds"]
            s["synthetic_kinds"] = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        out.append(Stage(**s))
    return tuple(out)


def _coerce_floats(cls, d: dict[str, Any]) -> dict[str, Any]:
    """YAML 1.1 reads ``2e6`` as a string: accept numeric strings for float fields."""
    floats = {f.name for f in dataclasses.fields(cls) if "float" in str(f.type)}
    for k, v in d.items():
        if k in floats and isinstance(v, str):
            try:
                d[k] = float(v)
            except ValueError:
                pass
    return d


def load_run_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML/JSON run config file (``yaml.safe_load``; never executes anything)."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise ValueError(f"config file '{p}' does not exist")
    if not p.is_file():
        raise ValueError(f"config file '{p}' is not a file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"config file '{p}' is not valid UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"config file '{p}' is not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file '{p}' must hold a mapping of run settings, got {type(data).__name__}")
    return data


def stage_model_configs(base, stages) -> list:
    """The ModelConfig of each stage: ``rope_theta`` and ``model`` overrides carry forward; a later stage longer than
    ``max_seq_len`` raises it to its ``seq_len`` (the first stage must fit the model as configured). ``model``
    names options nested (``rope: {scaling: yarn}``) or by their flat names (``rope_scaling: yarn``); a stage's
    ``rope_theta`` wins over its ``model``'s."""
    from ..config import merge_overrides

    cfgs, cur = [], base
    for i, st in enumerate(stages):
        layers: list[dict[str, Any]] = [st.model] if st.model else []
        if st.rope_theta is not None and float(st.rope_theta) != cur.rope.theta:
            layers.append({"rope": {"theta": float(st.rope_theta)}})
        over = merge_overrides(*layers)
        if st.seq_len > cur.max_seq_len:
            if i == 0:
                raise ValueError(
                    f"seq_len {st.seq_len} exceeds the model's max_seq_len {cur.max_seq_len}; "
                    f"raise it with --model.max_seq_len {st.seq_len}"
                )
            over["max_seq_len"] = st.seq_len
        cur = cur.replace(**over) if over else cur
        cfgs.append(cur)
    return cfgs
