"""The experiment config, read once into typed, validated objects: ``Hyperparameters`` and ``DataSettings``.

Every key is converted to its field's type and checked against its allowed range here, once, so
the trial and the tools never see a value that would fail later (a NaN loss, a sampler crash). A
bad value is a ``ConfigError`` of one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import reprlib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from samespace.errors import ConfigError

ENGINES = ("auto", "torch", "onnx")  # what runs the frozen trunk: samespace/engine.py

logger = logging.getLogger("samespace.settings")

DATA_DIR_ENV = "SAMESPACE_DATA_DIR"
DEFAULT_DATA_DIR = "data"
SAMPLERS = ("exact", "streaming")
COMPILE_MODES = ("auto", "true", "false")
TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "off", "0"})
SEED_MAX = 2**32 - 1  # numpy's RandomState (the exact sampler) takes seeds in [0, 2**32)
# Hyperparameters renamed since; checkpoints and configs written before still carry the old name.
RENAMED_HYPERPARAMETERS = {"lr": "learning_rate"}

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a setting allows: a test on the converted value, and its wording for error messages."""

    test: Callable[[Any], bool]
    allowed: str


def setting(default: Any = dataclasses.MISSING, *, allowed: str, test: Callable[[Any], bool] = lambda _: True) -> Any:
    """A dataclass field with its rule."""
    return dataclasses.field(default=default, metadata={"rule": Rule(test, allowed)})


# ---------------------------------------------------------------------------------------------
# Conversions by field type. Each raises ValueError or TypeError for a value of the wrong kind;
# booleans are never numbers (YAML's `yes` would otherwise train with learning_rate 1).


def to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(type(value).__name__)
    number = float(value.strip()) if isinstance(value, str) else float(value)  # PyYAML reads 1e-3 as a string
    if math.isnan(number):
        raise ValueError("NaN")
    return number


def to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(type(value).__name__)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("not a whole number")
        return int(value)
    return int(value.strip()) if isinstance(value, str) else value


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS  # "false" from a command-line override
    raise ValueError("not a boolean")


def to_word(value: Any) -> str:
    """A choice, case-insensitive; YAML's bare true/false arrive as booleans."""
    if isinstance(value, bool):
        return str(value).lower()
    if not isinstance(value, str):
        raise TypeError(type(value).__name__)
    return value.strip().lower()


def to_path(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise TypeError(type(value).__name__)


CONVERSIONS: dict[type, Callable[[Any], Any]] = {float: to_float, int: to_int, bool: to_bool, str: to_word}


def conversion(hint: Any) -> Callable[[Any], Any]:
    """The conversion for a resolved field type: a plain type, or an optional path (``str | None``)."""
    if hint in CONVERSIONS:
        return CONVERSIONS[hint]
    if set(typing.get_args(hint)) == {str, type(None)}:
        return to_path
    if set(typing.get_args(hint)) == {int, type(None)}:
        return lambda value: None if value is None else to_int(value)
    raise TypeError(f"no conversion for fields of type {hint}")


def describe(value: Any) -> str:
    """A value as an error message shows it: short, one line."""
    return _short.repr(value)


def read_section(cls: type, values: Any, aliases: dict[str, str] | None = None) -> Any:
    """An instance of dataclass ``cls`` from a config section: every key known, converted to its
    field's type (resolved type hints, so with or without ``from __future__ import annotations``)
    and within its rule."""
    section = cls.SECTION
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section} must be a mapping of names to values, not {describe(values)}")
    values = dict(values)
    given = {}  # messages name a key as the config wrote it
    for old, new in (aliases or {}).items():
        if old in values:
            if new in values:
                raise ConfigError(f"{section} has both {old} and {new}; keep only {new} ({old} is its old name)")
            values[new], given[new] = values.pop(old), old
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"unknown {section} key(s) {unknown}; known: {sorted(fields)}")
    missing = [name for name, f in fields.items() if f.default is dataclasses.MISSING and name not in values]
    if missing:
        raise ConfigError(f"{section} key(s) {missing} missing: the config must set them")
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in values.items():
        rule: Rule = fields[name].metadata["rule"]
        try:
            converted = conversion(hints[name])(value)
            valid = rule.test(converted)
        except (TypeError, ValueError, OverflowError):
            valid = False
        if not valid:
            raise ConfigError(f"{section}.{given.get(name, name)} = {describe(value)}: must be {rule.allowed}")
        out[name] = converted
    return cls(**out)


def resolve_data_dir(configured: str | os.PathLike | None = None, explicit: str | os.PathLike | None = None) -> Path:
    """The data directory: an explicit command-line value, else $SAMESPACE_DATA_DIR, else the
    config's value, else ``./data``.

    The environment variable beats the config so that a cluster can point every trial at one
    bind-mounted copy without editing the experiment configs.
    """
    chosen = explicit or os.environ.get(DATA_DIR_ENV) or configured or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()


def positive_finite(value: float) -> bool:
    return 0 < value < math.inf


DROPOUT_ALLOWED = "a number in [0, 1)"


def is_dropout(p: float) -> bool:
    """A dropout probability torch accepts and that trains: 0 <= p < 1 (so not NaN or inf)."""
    return 0 <= p < 1


def dropout(default: Any = dataclasses.MISSING) -> Any:
    return setting(default, allowed=DROPOUT_ALLOWED, test=is_dropout)


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    """The trial's hyperparameters (the config's ``hyperparameters`` section)."""

    SECTION: typing.ClassVar[str] = "hyperparameters"

    learning_rate: float = setting(allowed="a finite number > 0", test=positive_finite)
    alpha: float = setting(
        allowed="a number in (0, 1) (RMSprop's smoothing; 1 or more makes the loss NaN)", test=lambda a: 0 < a < 1
    )
    dropout1: float = dropout()
    dropout2: float = dropout()
    dropout3: float = dropout()
    global_batch_size: int = setting(64, allowed="an integer >= 1", test=lambda n: n >= 1)
    epochs: int = setting(30, allowed="an integer >= 1", test=lambda n: n >= 1)
    # What a local run trained when it was given --batches (recorded instead of epochs).
    batches: int | None = setting(None, allowed="an integer >= 1", test=lambda n: n is None or n >= 1)
    pretrained: bool = setting(True, allowed="true or false")
    compile_optimizer: str = setting("auto", allowed="one of auto, true, false", test=lambda m: m in COMPILE_MODES)

    @classmethod
    def from_hparams(cls, hparams: Any) -> "Hyperparameters":
        """Typed, validated values from Determined's hparams (``lr`` is read as ``learning_rate``)."""
        return read_section(cls, hparams, aliases=RENAMED_HYPERPARAMETERS)

    @property
    def dropouts(self) -> tuple[float, float, float]:
        return (self.dropout1, self.dropout2, self.dropout3)


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """The experiment config's ``data`` section."""

    SECTION: typing.ClassVar[str] = "data"

    dir: str | None = setting(None, allowed="a folder path")
    download: bool = setting(True, allowed="true or false")
    self_pairs: bool = setting(True, allowed="true or false")
    sampler: str = setting("streaming", allowed=f"one of {', '.join(sorted(SAMPLERS))}", test=lambda s: s in SAMPLERS)
    seed: int = setting(0, allowed=f"an integer in [0, {SEED_MAX}]", test=lambda s: 0 <= s <= SEED_MAX)
    feature_cache: bool = setting(True, allowed="true or false")
    cache_dir: str | None = setting(None, allowed="a folder path")
    workers: int = setting(2, allowed="an integer >= 0", test=lambda n: n >= 0)
    # What builds the feature cache (samespace/engine.py): auto is onnxruntime on the CPU (about 3x
    # torch there), torch on CUDA. The cache key names the engine, so engines' entries never mix.
    engine: str = setting("auto", allowed=f"one of {', '.join(ENGINES)}", test=lambda s: s in ENGINES)

    @classmethod
    def from_config(cls, section: Any) -> "DataSettings":
        """Typed, validated values from the config's ``data`` section (None: all defaults)."""
        return read_section(cls, section)

    @property
    def data_dir(self) -> Path:
        return resolve_data_dir(self.dir)

    def cache_root(self, data_dir: Path | None = None) -> Path:
        """Where trunk features are cached: ``cache_dir``, else inside the data directory, so the
        trials of a search sharing the data share the features too; when that is not writable (a
        read-only mount), the per-user cache folder, with one log line."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        inside = (data_dir or self.data_dir) / ".samespace-cache" / "features"
        if writable_dir(inside):
            return inside
        fallback = user_cache_dir() / "features"
        if inside not in _FALLBACKS_LOGGED:
            _FALLBACKS_LOGGED.add(inside)
            logger.info("feature cache: %s is not writable; using %s", inside, fallback)
        return fallback


_FALLBACKS_LOGGED: set[Path] = set()


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/samespace (default ~/.cache/samespace)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "samespace"


def writable_dir(path: Path) -> bool:
    """Whether ``path`` exists or can be created, and files can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum`` (argparse prints one usage line)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse
