"""Score a per-decoder config: accuracy from one source, throughput from another, as one `Metrics`.

Accuracy sources: `EmulatedAccuracy` (the emulator against cached reference logits, CPU or CUDA, fast or exact),
`HardwareSource` (a tt-transformers run on a Tenstorrent device, also a throughput source) and `ImportedAccuracy`
(results measured elsewhere, read from a file). Throughput sources: `ModelledThroughput` (the calibrated model) and
`HardwareSource`. A config tt-transformers would refuse (unsupported, does not fit in DRAM) scores as an infeasible
`Metrics` carrying the reason; it never raises.

Accuracy is scored window by window (`Evaluator.windows` yields the running result), so a caller can stop early.
Within one process the emulated source re-quantises only weight groups a config changes (the emulator's weight
cache) and, when a config shares decoders 0..i-1 with one already run, starts from the hidden states that entered
decoder i then (`PrefixStates`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tunelab.errors import ConfigError, TunelabError
from tunelab.files import shown
from tunelab.interop import to_decoder_config
from tunelab.perf import Device, memory_per_chip, predict
from tunelab.precision import ModelPrecision, Precision, check_decoder_count

if TYPE_CHECKING:
    from tunelab.backends.emulated import EmulatedModel
    from tunelab.backends.emulated.model import HiddenStates
    from tunelab.backends.tt_hardware import TTHardware
    from tunelab.eval.accuracy import AccuracyResult
    from tunelab.eval.reference import Reference
    from tunelab.models.config import ModelConfig

__all__ = [
    "AccuracySource",
    "EmulatedAccuracy",
    "EvaluationSettings",
    "Evaluator",
    "HardwareSource",
    "ImportedAccuracy",
    "Metrics",
    "ModelledThroughput",
    "PrefixStates",
    "Speed",
    "ThroughputSource",
    "config_key",
    "emulated_evaluator",
    "identity_key",
]


def _digest(obj: Any, n: int = 16) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def config_key(precision: ModelPrecision) -> str:
    """A config's identity: the hash of its canonical complete decoder_config JSON."""
    return _digest(to_decoder_config(precision))


def identity_key(identity: Mapping[str, Any]) -> str:
    """A short hash of a source's or evaluator's identity."""
    return _digest(dict(identity))


@dataclass(frozen=True)
class Metrics:
    """Everything known about one config, in one set of units (accuracy as fractions, speed in tok/s/user).

    `feasible` False means tt-transformers would refuse the config (`reason` says why); its accuracy is not run.
    """

    config_key: str
    feasible: bool = True
    reason: str | None = None
    top1: float | None = None
    top1_ci: tuple[float, float] | None = None
    top1_tie_aware: float | None = None
    top5: float | None = None
    kl: float | None = None
    ppl: float | None = None
    n_windows: int = 0
    n_positions: int = 0
    per_window_top1: tuple[float, ...] = ()
    tok_s_u: float | None = None
    ttft_ms: float | None = None
    dram_bytes: float | None = None  # weights + KV cache per chip
    accuracy_kind: str | None = None  # emulated | measured | imported
    throughput_kind: str | None = None  # modelled | measured
    evaluator: str = ""  # identity_key of what produced it
    seconds: float = 0.0

    @property
    def kind(self) -> str:
        """How the numbers were obtained, e.g. "emulated+modelled"."""
        return "+".join(k for k in (self.accuracy_kind, self.throughput_kind) if k) or "none"

    @property
    def top1_half_width(self) -> float | None:
        return None if self.top1_ci is None else (self.top1_ci[1] - self.top1_ci[0]) / 2

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["top1_ci"] = None if self.top1_ci is None else list(self.top1_ci)
        data["per_window_top1"] = list(self.per_window_top1)
        data["kind"] = self.kind
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Metrics:
        """Metrics stored as JSON (a trial's user attribute, a cache row); a malformed value is a one-line
        `TunelabError` naming the field."""
        if not isinstance(data, Mapping):
            raise TunelabError(f"metrics: expected a JSON object, found {shown(data)}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        problem = _metrics_problem(values)
        if problem is not None:
            raise TunelabError(f"metrics: {problem}")
        if values.get("top1_ci") is not None:
            values["top1_ci"] = tuple(values["top1_ci"])
        values["per_window_top1"] = tuple(values.get("per_window_top1") or ())
        return cls(**values)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _optional(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or check(value)


_METRIC_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "config_key": (lambda v: isinstance(v, str), "a string"),
    "evaluator": (lambda v: isinstance(v, str), "a string"),
    "feasible": (lambda v: isinstance(v, bool), "true or false"),
    "n_windows": (lambda v: type(v) is int, "an integer"),
    "n_positions": (lambda v: type(v) is int, "an integer"),
    "top1_ci": (
        _optional(lambda v: isinstance(v, list | tuple) and len(v) == 2 and all(map(_is_number, v))),
        "two numbers or null",
    ),
    "per_window_top1": (
        _optional(lambda v: isinstance(v, list | tuple) and all(map(_is_number, v))),
        "a list of numbers",
    ),
    **dict.fromkeys(
        ("reason", "accuracy_kind", "throughput_kind"),
        (_optional(lambda v: isinstance(v, str)), "a string or null"),
    ),
    **dict.fromkeys(
        ("top1", "top1_tie_aware", "top5", "kl", "ppl", "tok_s_u", "ttft_ms", "dram_bytes", "seconds"),
        (_optional(_is_number), "a number or null"),
    ),
}


def _metrics_problem(values: Mapping[str, Any]) -> str | None:
    """What is wrong with stored metrics fields (their types), or None."""
    if "config_key" not in values:
        return "config_key is missing"
    for key, value in values.items():
        check, expected = _METRIC_FIELDS[key]
        if not check(value):
            return f"{key} must be {expected}, found {shown(value)}"
    return None


@dataclass(frozen=True)
class Speed:
    """What a throughput source says about a config."""

    tok_s_u: float
    ttft_ms: float | None
    dram_bytes: float | None


class ThroughputSource(Protocol):
    kind: str

    @property
    def identity(self) -> dict[str, Any]: ...

    def speed(self, precision: ModelPrecision) -> Speed:
        """Decode speed of a config; raises a `TunelabError` where tt-transformers would refuse it."""
        ...


class AccuracySource(Protocol):
    kind: str

    @property
    def identity(self) -> dict[str, Any]: ...

    @property
    def max_windows(self) -> int: ...

    def windows(self, precision: ModelPrecision, n_windows: int) -> Iterator[AccuracyResult]:
        """The running accuracy after each of the first `n_windows` windows."""
        ...


class ModelledThroughput:
    """tok/s/user, TTFT and DRAM from the calibrated throughput model (milliseconds per config)."""

    kind = "modelled"

    def __init__(
        self,
        model: ModelConfig,
        device: Device,
        batch: int = 1,
        seq_len: int = 512,
        lm_head: Precision = Precision.BFP8,
    ) -> None:
        self.model, self.device, self.batch, self.seq_len, self.lm_head = (
            model,
            device,
            batch,
            seq_len,
            lm_head,
        )

    @property
    def identity(self) -> dict[str, Any]:
        return {
            "throughput": "modelled",
            "model": self.model.name,
            "mesh_device": self.device.name,
            "batch": self.batch,
            "seq_len": self.seq_len,
            "lm_head": self.lm_head.value,
        }

    def speed(self, precision: ModelPrecision) -> Speed:
        result = predict(self.model, precision, self.device, self.batch, self.seq_len, lm_head=self.lm_head)
        weights, kv = memory_per_chip(
            self.model, precision, self.device, self.batch, self.seq_len, lm_head=self.lm_head
        )
        return Speed(result.tok_s_u, result.ttft_ms, weights + kv)


class PrefixStates:
    """Hidden states entering each decoder, keyed by (window, decoders before it), LRU-bounded by bytes."""

    def __init__(self, budget_bytes: int = 1 << 30) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[tuple[int, str], HiddenStates] = OrderedDict()
        self._bytes = 0
        self.hits = 0

    @staticmethod
    def prefixes(precision: ModelPrecision) -> list[str]:
        """prefixes[i] identifies decoders 0..i-1 (prefixes[0] is the empty prefix)."""
        out, h = [""], hashlib.blake2b(digest_size=12)
        for decoder in precision.decoders[:-1]:
            h.update(repr(decoder).encode())
            out.append(h.copy().hexdigest())
        return out

    def longest(self, window: int, prefixes: list[str]) -> tuple[int, HiddenStates | None]:
        """(i, states) for the deepest stored decoder i > 0 whose prefix matches, else (0, None)."""
        for layer in range(len(prefixes) - 1, 0, -1):
            states = self._entries.get((window, prefixes[layer]))
            if states is not None:
                self._entries.move_to_end((window, prefixes[layer]))
                self.hits += 1
                return layer, states
        return 0, None

    def put(self, window: int, prefix: str, states: HiddenStates) -> None:
        key = (window, prefix)
        if key in self._entries or not prefix:
            return
        self._entries[key] = states
        self._bytes += sum(t.numel() * t.element_size() for t in states)
        while self._bytes > self.budget_bytes and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= sum(t.numel() * t.element_size() for t in evicted)


class EmulatedAccuracy:
    """Teacher-forced top-1/top-5/KL of the emulated config against a reference, window by window."""

    kind = "emulated"

    def __init__(
        self,
        emulator: EmulatedModel,
        reference: Reference,
        model_fingerprint: str,
        prefix_budget_bytes: int = 1 << 30,
    ) -> None:
        self.emulator = emulator
        self.reference = reference
        self.model_fingerprint = model_fingerprint
        self.states = PrefixStates(prefix_budget_bytes)

    @property
    def identity(self) -> dict[str, Any]:
        options = self.emulator.options
        return {
            "accuracy": "emulated",
            "model_fingerprint": self.model_fingerprint,
            "reference": self.reference.key,
            "accumulation": options.accumulation,
            "lm_head": options.lm_head_format,
            "minimal_matmul_prefill": options.minimal_matmul_prefill,
            "device": self.emulator.device.type,
        }

    @property
    def max_windows(self) -> int:
        return self.reference.n_windows

    def windows(self, precision: ModelPrecision, n_windows: int) -> Iterator[AccuracyResult]:
        from tunelab.eval.accuracy import Scorer

        scorer = Scorer(self.reference)
        prefixes = PrefixStates.prefixes(precision)
        for window in range(n_windows):
            start, entering = self.states.longest(window, prefixes)
            logits = self.emulator.teacher_forced(
                self.reference.tokens[window, :-1],
                self.reference.prefill_len,
                precision,
                start=start,
                entering=entering,
                on_layer=lambda layer, states, w=window: self.states.put(w, prefixes[layer], states),
            )
            scorer.add(window, logits)
            yield scorer.result()


def _fraction(x: Any) -> float | None:
    """A fraction from a fraction or a percentage (tt-metal prints percentages)."""
    return None if x is None else float(x) / (100.0 if float(x) > 1 else 1.0)


class ImportedAccuracy:
    """Accuracy measured elsewhere: a JSON list of {"config": decoder_config, "top1": .., "top5": ..} objects.

    top1/top5 are fractions (or percentages, when above 1, as tt-metal prints them); a config not in the file is
    an error naming it.
    """

    kind = "imported"

    def __init__(self, path: str | Path, n_layers: int) -> None:
        from tunelab.interop.decoder_json import parse_decoder_config
        from tunelab.presets import hard_defaults

        self.path = Path(path)
        try:
            rows = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise TunelabError(f"{self.path}: cannot read imported results: {exc}") from None
        if not isinstance(rows, list):
            raise TunelabError(f"{self.path}: expected a JSON list of results")
        self.results: dict[str, dict[str, float]] = {}
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or "config" not in row or "top1" not in row:
                raise TunelabError(f"{self.path}: result {i} needs 'config' and 'top1'")
            parsed = parse_decoder_config(
                row["config"], lambda _name: hard_defaults(), source=f"{self.path}: result {i}"
            )
            precision = parsed.fit(n_layers, hard_defaults())
            self.results[config_key(precision)] = {
                "top1": _fraction(row["top1"]),
                "top5": _fraction(row.get("top5")),
            }
        self._digest = _digest(sorted(self.results.items()))

    @property
    def identity(self) -> dict[str, Any]:
        return {"accuracy": "imported", "file": self._digest}

    @property
    def max_windows(self) -> int:
        return 1

    def windows(self, precision: ModelPrecision, n_windows: int) -> Iterator[AccuracyResult]:
        from tunelab.eval.accuracy import AccuracyResult

        found = self.results.get(config_key(precision))
        if found is None:
            raise TunelabError(f"{self.path}: no result for config {config_key(precision)}")
        top1, top5 = found["top1"], found["top5"]
        yield AccuracyResult(
            top1=top1, top5=top5 if top5 is not None else float("nan"), kl=None, ppl=float("nan"),
            top1_ci=(top1, top1), top5_ci=(top5 or 0.0, top5 or 0.0), n_positions=0, n_windows=1,
            top1_tie_aware=top1, tie_rate=0.0, reference_ppl=None, kl_support_mass=None, per_window=[],
            position_top1=[], position_top5=[],
        )  # fmt: skip


class HardwareSource:
    """A tt-transformers run on a Tenstorrent device: measured top-1/top-5 and decode speed from one run."""

    kind = "measured"

    def __init__(self, hardware: TTHardware, batch: int = 1) -> None:
        self.hardware, self.batch = hardware, batch
        self._last: tuple[str, Any] | None = None

    @property
    def identity(self) -> dict[str, Any]:
        return {
            "hardware": self.hardware.hf_model,
            "mesh_device": self.hardware.device.name,
            "batch": self.batch,
        }

    @property
    def max_windows(self) -> int:
        return 1

    def _measure(self, precision: ModelPrecision) -> Any:
        key = config_key(precision)
        if self._last is None or self._last[0] != key:
            self._last = (key, self.hardware.evaluate(precision, self.batch))
        return self._last[1]

    def speed(self, precision: ModelPrecision) -> Speed:
        measured = self._measure(precision).throughput
        return Speed(measured.tok_s_u, measured.ttft_ms, None)

    def windows(self, precision: ModelPrecision, n_windows: int) -> Iterator[AccuracyResult]:
        from tunelab.eval.accuracy import AccuracyResult

        m = self._measure(precision)
        top1, top5 = m.top1 / 100, m.top5 / 100
        yield AccuracyResult(
            top1=top1, top5=top5, kl=None, ppl=float("nan"), top1_ci=(top1, top1), top5_ci=(top5, top5),
            n_positions=0, n_windows=1, top1_tie_aware=top1, tie_rate=0.0, reference_ppl=None,
            kl_support_mass=None, per_window=[], position_top1=[], position_top5=[],
        )  # fmt: skip


@dataclass
class Evaluator:
    """`score(config) -> Metrics` from an accuracy source and a throughput source, on `n_windows` windows."""

    accuracy: AccuracySource
    throughput: ThroughputSource
    n_windows: int | None = None  # None: every window the accuracy source has
    model: ModelConfig | None = None  # the model whose configs are scored (names presets, sizes the space)

    def __post_init__(self) -> None:
        available = self.accuracy.max_windows
        if self.n_windows is None:
            self.n_windows = available
        if not 1 <= self.n_windows <= available:
            raise TunelabError(
                f"--windows must be in 1..{available} (the reference has {available}), got {self.n_windows}"
            )

    @property
    def identity(self) -> dict[str, Any]:
        return {
            **self.accuracy.identity,
            **self.throughput.identity,
            "n_windows": self.n_windows,
        }

    @property
    def key(self) -> str:
        return identity_key(self.identity)

    def with_windows(self, n_windows: int | None) -> Evaluator:
        """The same sources scored on another number of windows."""
        return Evaluator(self.accuracy, self.throughput, n_windows, self.model)

    def speed(self, precision: ModelPrecision) -> Metrics:
        """Throughput only (cheap): a Metrics without accuracy, or an infeasible one with its reason."""
        key = config_key(precision)
        try:
            speed = self.throughput.speed(precision)
        except TunelabError as exc:
            return Metrics(key, feasible=False, reason=str(exc), evaluator=self.key)
        return Metrics(
            key,
            tok_s_u=speed.tok_s_u,
            ttft_ms=speed.ttft_ms,
            dram_bytes=speed.dram_bytes,
            throughput_kind=self.throughput.kind,
            evaluator=self.key,
        )

    def windows(self, precision: ModelPrecision) -> Iterator[Metrics]:
        """The Metrics after each window (throughput first; an infeasible config yields once and stops)."""
        start = time.perf_counter()
        base = self.speed(precision)
        if not base.feasible:
            yield base
            return
        for result in self.accuracy.windows(precision, self.n_windows):
            yield _with_accuracy(base, result, self.accuracy.kind, time.perf_counter() - start)

    def score(self, precision: ModelPrecision, on_window: Callable[[Metrics], None] | None = None) -> Metrics:
        """The Metrics of a config over all `n_windows` windows."""
        last = None
        for last in self.windows(precision):
            if on_window is not None:
                on_window(last)
        assert last is not None
        return last


def _with_accuracy(base: Metrics, result: AccuracyResult, kind: str, seconds: float) -> Metrics:
    import math

    def real(x: float | None) -> float | None:
        return None if x is None or math.isnan(x) else x

    return Metrics(
        base.config_key,
        top1=result.top1,
        top1_ci=tuple(result.top1_ci),
        top1_tie_aware=result.top1_tie_aware,
        top5=real(result.top5),
        kl=result.kl,
        ppl=real(result.ppl),
        n_windows=result.n_windows,
        n_positions=result.n_positions,
        per_window_top1=tuple(w.top1 for w in result.per_window),
        tok_s_u=base.tok_s_u,
        ttft_ms=base.ttft_ms,
        dram_bytes=base.dram_bytes,
        accuracy_kind=kind,
        throughput_kind=base.throughput_kind,
        evaluator=base.evaluator,
        seconds=seconds,
    )


@dataclass(frozen=True)
class EvaluationSettings:
    """How configs of a model are scored: emulated accuracy on cached reference windows, modelled throughput."""

    model: str = "smollm2-135m"
    mesh_device: str = "N150"
    windows: int | None = 2  # None: every window of the reference
    accumulation: str = "fast"
    lm_head: str = "bfp8"
    device: str = "cpu"
    corpus: str = "default"
    window_len: int = 1024
    prefill_len: int = 512
    layers: int | None = None
    batch: int = 1
    seq_len: int = 512

    def __post_init__(self) -> None:
        """Settings that no model can score are refused here, before anything is stored or loaded."""
        for name in ("model", "mesh_device", "device", "corpus"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, found {shown(getattr(self, name))}")
        for name in ("window_len", "prefill_len", "batch", "seq_len"):
            _check_int(name, getattr(self, name), 1)
        if self.windows is not None:
            from tunelab.eval.corpus import DEFAULT_WINDOWS

            _check_int("windows", self.windows, 1)
            if self.windows > DEFAULT_WINDOWS:
                raise ConfigError(
                    f"--windows must be 1..{DEFAULT_WINDOWS} (a reference holds at most {DEFAULT_WINDOWS}), "
                    f"got {self.windows}"
                )
        if self.layers is not None:
            check_decoder_count(self.layers, "--layers")
        if self.window_len < 2 or self.prefill_len >= self.window_len:
            raise ConfigError(
                f"--prefill must be in 1..{self.window_len - 1} (below --window-len {self.window_len}), "
                f"got {self.prefill_len}"
            )
        if self.accumulation not in ("fast", "exact"):
            raise ConfigError(f"unknown accumulation {self.accumulation!r} (expected fast or exact)")
        if self.lm_head not in ("bfp8", "bf16"):
            raise ConfigError(f"unknown LM head format {self.lm_head!r} (expected bfp8 or bf16)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


_OPTIONS = {"window_len": "--window-len", "prefill_len": "--prefill", "seq_len": "--seq-len"}


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        option = _OPTIONS.get(name, f"--{name}")
        raise ConfigError(f"{option} must be an integer >= {low}, got {value!r:.40}")


def emulated_evaluator(
    settings: EvaluationSettings,
    *,
    reference_dir: str | Path | None = None,
    loaded: Any = None,
    on_load: Callable[[str], None] | None = None,
    on_loaded: Callable[[Any], None] | None = None,
) -> tuple[Evaluator, Any]:
    """(Evaluator, loaded model) for `settings`: the model loaded (unless given), its reference found or built
    (all of the corpus's windows, at most 8, so that verification can use more than the search), the emulator
    checked against the reference's model fingerprint, throughput modelled on the mesh device. `on_loaded(model)`
    sees a model this loads before anything is built for it (it may refuse the model by raising)."""
    from tunelab.backends.emulated import EmulatorOptions, emulator_for
    from tunelab.eval.corpus import WindowSpec
    from tunelab.eval.reference import ReferenceStore, check_fingerprint, get_reference
    from tunelab.models import load_model
    from tunelab.perf import device as mesh_device

    def load(source: str, n_layers: int | None) -> Any:
        model = load_model(source, n_layers=n_layers)
        if on_loaded is not None:
            on_loaded(model)
        return model

    target = mesh_device(settings.mesh_device)
    reference, loaded, _ = get_reference(
        settings.model,
        settings.corpus,
        WindowSpec(settings.window_len, settings.prefill_len, None),
        device=settings.device,
        layers=settings.layers,
        store=ReferenceStore(reference_dir),
        loaded=loaded,
        load_model=load,
        on_load=on_load,
    )
    if loaded is None:
        if on_load is not None:
            on_load(settings.model)
        loaded = load(settings.model, settings.layers)
    check_fingerprint(reference, loaded, settings.model)
    options = EmulatorOptions(settings.accumulation, lm_head_format=settings.lm_head)
    emulator = emulator_for(loaded, options, settings.device)
    accuracy = EmulatedAccuracy(emulator, reference, loaded.fingerprint)
    throughput = ModelledThroughput(
        loaded.config, target, settings.batch, settings.seq_len, Precision(settings.lm_head)
    )
    return Evaluator(accuracy, throughput, settings.windows, model=loaded.config), loaded
