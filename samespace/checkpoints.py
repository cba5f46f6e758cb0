"""Loading checkpoints: Determined checkpoint folders written by our trial or by the original's.

Nothing in a checkpoint folder is trusted: every way it can be wrong (missing or empty files, JSON
that is not an object, a foreign trial, a file torch cannot read safely, keys or shapes that do not
fit, non-finite weights, a checksum mismatch) is one ``CheckpointError`` line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any, Sequence

import appdirs
import numpy as np
import torch

from samespace import original
from samespace.errors import CheckpointError, ConfigError, first_line
from samespace.network import SiameseNet, network_from_hparams
from samespace.settings import DROPOUT_ALLOWED, Hyperparameters, is_dropout

logger = logging.getLogger("samespace.checkpoints")

TRIAL_SPEC = "model_def:SiameseTrial"
CHECKSUM_FILE = "samespace.json"
PREPROCESSING_CHOICES = ("auto", "ours", "original")
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
DOWNLOADS = Path("checkpoints")  # where model_download.py puts checkpoints by default, relative to the cwd


def allow_determined_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read Determined checkpoints.

    Determined saves numpy's RNG state (a tuple holding an ndarray) in ``state_dict.pth``. Since
    torch 2.6 ``torch.load`` refuses such globals by default, which breaks reloading and
    pause/resume. Allow exactly the numpy pieces of that state, not arbitrary pickles, also under
    the names numpy 1.x pickled them with (the original's checkpoint, torch 1.10).
    """
    if not hasattr(torch.serialization, "add_safe_globals"):  # torch < 2.4 loads them anyway
        return
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, type(np.dtype(np.uint32))]
    allowed += [(multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    try:
        torch.serialization.add_safe_globals(allowed)
    except (TypeError, ValueError):  # torch 2.4 takes no (global, name) pairs: no numpy 1.x names then
        torch.serialization.add_safe_globals(allowed[:-1])


allow_determined_checkpoints()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksum(checkpoint_dir: str | os.PathLike, trained_with: dict[str, str] | None = None) -> Path:
    """Record the SHA-256 and size of ``state_dict.pth`` in ``samespace.json`` beside it, atomically,
    with ``trained_with`` (how the run made its inputs, e.g. the engine that built the feature cache)."""
    folder = Path(checkpoint_dir)
    state_file = folder / "state_dict.pth"
    record: dict = {"state_dict.pth": {"sha256": sha256_of(state_file), "bytes": state_file.stat().st_size}}
    if trained_with:
        record["trained with"] = dict(trained_with)
    target = folder / CHECKSUM_FILE
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        partial.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(partial, target)
    except BaseException:  # a full disk leaves it created and empty
        partial.unlink(missing_ok=True)
        raise
    return target


def verify_checksum(folder: Path) -> bool:
    """Check ``state_dict.pth`` against ``samespace.json``; False when there is no such record.

    Checkpoints written before the record existed, and the original's, carry none: they load
    unchecked.
    """
    record_file, state_file = folder / CHECKSUM_FILE, folder / "state_dict.pth"
    if not record_file.is_file():
        return False
    damaged = f"{record_file} is damaged (not a checksum record); download the checkpoint again"
    try:
        expected = read_json_object(record_file).get("state_dict.pth")
        digest, size = str(expected["sha256"]), expected["bytes"]
    except CheckpointError:
        raise CheckpointError(damaged) from None
    except (TypeError, KeyError, AttributeError):
        raise CheckpointError(damaged) from None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:  # 1e999 reads as inf
        raise CheckpointError(damaged)
    actual_size = state_file.stat().st_size
    try:
        matches = actual_size == size and sha256_of(state_file) == digest
    except OSError as exc:
        raise CheckpointError(f"cannot read {state_file}: {exc.strerror or type(exc).__name__}") from None
    if not matches:
        raise CheckpointError(
            f"{state_file} does not match the checksum in {CHECKSUM_FILE} ({actual_size:,} bytes, expected "
            f"{size:,}; SHA-256 differs): it was damaged on disk or in transfer; download the checkpoint again"
        )
    return True


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file of a checkpoint as an object, any damage one ``CheckpointError`` line: not
    UTF-8, not JSON, nested too deeply for the parser (RecursionError), or not an object."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({first_line(exc, 100)}); download it again") from None
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({first_line(exc, 100)}); download it again") from None
    except RecursionError:
        raise CheckpointError(f"{path} is not a checkpoint's JSON (nested too deeply); download it again") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} holds a JSON {type(meta).__name__}, not an object; download it again")
    return meta


def read_load_data(path: Path) -> dict[str, Any]:
    """``load_data.json`` as a JSON object."""
    return read_json_object(path)


def original_dropouts(hparams: Any, where: Path) -> tuple[float, float, float]:
    """The original's hyperparameters, checked: all of ``original.HPARAMS``, as numbers."""
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{where}: hparams is not a mapping; not a checkpoint of the original")
    missing = [name for name in original.HPARAMS if name not in hparams]
    if missing:
        raise CheckpointError(f"{where}: hyperparameters {missing} are missing; not a checkpoint of the original")
    try:
        values = {name: float(hparams[name]) for name in original.HPARAMS}
    except (TypeError, ValueError):
        raise CheckpointError(f"{where}: hyperparameters {list(original.HPARAMS)} must be numbers") from None
    dropouts = values["dropout1"], values["dropout2"], values["dropout3"]
    wrong = [
        f"{name} is {value:g}"
        for name, value in zip(("dropout1", "dropout2", "dropout3"), dropouts)
        if not is_dropout(value)
    ]
    if wrong:
        raise CheckpointError(f"{where}: {', '.join(wrong)}; each dropout must be {DROPOUT_ALLOWED}")
    return dropouts


def read_model_state(state_file: Path) -> dict[str, Any]:
    """``models_state_dict[0]`` of a Determined ``state_dict.pth``, loaded with ``weights_only``."""
    if state_file.stat().st_size == 0:
        raise CheckpointError(f"{state_file} is empty (0 bytes): the copy was cut short; download it again")
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and weights_only errors are all "not a torch file we trust"
        raise CheckpointError(
            f"cannot load {state_file}: not a checkpoint torch reads safely ({type(exc).__name__}: "
            f"{first_line(exc, 120)})"
        ) from None
    models = state.get("models_state_dict") if isinstance(state, dict) else None
    if not isinstance(models, (list, tuple)) or not models or not isinstance(models[0], dict):
        raise CheckpointError(f"{state_file} holds no models_state_dict: not a Determined PyTorchTrial checkpoint")
    return dict(models[0])


def names(keys: Sequence[str], limit: int = 3) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_weights(net: SiameseNet, state: dict[str, Any], state_file: Path, unknown: Sequence[str] = ()) -> None:
    """Load ``state`` into ``net`` strictly, naming in one line what does not fit.

    Types and shapes are checked first (torch's own message spans lines); missing and unexpected
    keys after loading, so that the network's load hooks (older head layouts) have had their say.
    """
    expected = net.state_dict()
    common = [key for key in expected if key in state]
    problems = []
    not_tensors = [key for key in common if not isinstance(state[key], torch.Tensor)]
    if not_tensors:
        problems.append(f"{len(not_tensors)} not tensors ({names(not_tensors)})")
    wrong = [
        f"{key} {tuple(state[key].shape)} instead of {tuple(expected[key].shape)}"
        for key in common
        if key not in not_tensors and state[key].shape != expected[key].shape
    ]
    if wrong:
        problems.append(f"{len(wrong)} of the wrong shape ({names(wrong, 2)})")
    if not problems:
        try:
            result = net.load_state_dict(state, strict=False)
        except Exception as exc:  # e.g. a dtype that does not convert
            raise CheckpointError(f"cannot load {state_file} into the network: {first_line(exc, 120)}") from None
        missing, unexpected = list(result.missing_keys), list(unknown) + list(result.unexpected_keys)
        if missing:
            problems.append(f"{len(missing)} missing ({names(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({names(unexpected)})")
    if problems:
        raise CheckpointError(f"{state_file} does not fit the network: {'; '.join(problems)}")
    weights = net.state_dict().items()
    bad = [key for key, tensor in weights if tensor.is_floating_point() and not tensor.isfinite().all()]
    if bad:
        raise CheckpointError(
            f"{state_file} holds non-finite weights ({names(bad)}): the training diverged or the file is damaged"
        )


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[SiameseNet, dict[str, Any]]:
    """The network (in eval mode, on ``device``) of a checkpoint folder, ours or the original's,
    and the checkpoint's ``load_data.json`` (hyperparameters and experiment config).

    Builds the network without downloading ImageNet weights (the state dict has them all), loads
    with ``weights_only=True`` and refuses anything that is not such a checkpoint. Ours is checked
    against the checksum written beside it (``samespace.json``) when there is one; older
    checkpoints and the original's have none and load unchecked. The network's
    ``preprocessing`` is the one its weights were trained with.
    """
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    load_data, state_file = folder / "load_data.json", folder / "state_dict.pth"
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not load_data.is_file() or not state_file.is_file():
        raise CheckpointError(f"{path} is not a Determined checkpoint (no load_data.json and state_dict.pth)")
    meta = read_load_data(load_data)
    if not isinstance(meta.get("experiment_config") or {}, dict):
        raise CheckpointError(f"{load_data}: experiment_config is not a mapping; download the checkpoint again")
    spec = meta.get("trial_cls_spec")
    if spec == TRIAL_SPEC:
        if not isinstance(meta.get("hparams"), dict):
            raise CheckpointError(f"{load_data}: hparams is not a mapping; download the checkpoint again")
        try:
            hparams = Hyperparameters.from_hparams(meta["hparams"])
        except ConfigError as exc:
            raise CheckpointError(f"{load_data}: {exc}") from None
        verify_checksum(folder)
        net = network_from_hparams(hparams, pretrained=False)
        load_weights(net, read_model_state(state_file), state_file)
    elif spec == original.TRIAL_SPEC:
        net = original.original_network(original_dropouts(meta.get("hparams"), load_data))
        verify_checksum(folder)
        state, unknown = original.our_state_dict(read_model_state(state_file))
        load_weights(net, state, state_file, unknown)
        # Its data section and any other hyperparameters configured its own trial, not ours: our
        # code reads only the hyperparameters it shares with ours, and our data defaults.
        hparams = {name: meta["hparams"][name] for name in original.HPARAMS}
        meta = {
            **meta,
            "hparams": hparams,
            "experiment_config": {**(meta.get("experiment_config") or {}), "data": None},
        }
    else:
        raise CheckpointError(
            f"{path} is a checkpoint of {spec!r}, not SameSpace ({TRIAL_SPEC} or the original's {original.TRIAL_SPEC})"
        )
    return net.to(device).eval(), meta


def find_checkpoint(reference: str | os.PathLike) -> Path:
    """The checkpoint folder ``reference`` names: a bare checkpoint UUID, looked up in the local
    Determined storage and in ``./checkpoints/`` (model_download's default), or a path."""
    text = os.fspath(reference)
    places = []
    if UUID.fullmatch(text):
        places = [local_checkpoint_root() / text, DOWNLOADS / text]
    places.append(Path(text))
    for place in places:
        if place.exists():
            return place
    if len(places) == 1:
        raise CheckpointError(f"checkpoint not found: {text} (not a path, nor a checkpoint UUID to look up)")
    looked = ", ".join(str(place.absolute()) for place in places)
    raise CheckpointError(
        f"checkpoint {text} not found (looked in {looked}); fetch it with python model_download.py --checkpoint {text}"
    )


def open_checkpoint(
    reference: str | os.PathLike, device: torch.device | str = "cpu", preprocessing: str = "auto"
) -> tuple[SiameseNet, dict[str, Any]]:
    """``load_checkpoint`` of a path or bare UUID, with ``preprocessing`` ("auto": the checkpoint's
    own, "ours" or "original"); logs which checkpoint and preprocessing it uses."""
    if preprocessing not in PREPROCESSING_CHOICES:
        raise ConfigError(f"--preprocessing must be one of {list(PREPROCESSING_CHOICES)}, not {preprocessing!r}")
    folder = find_checkpoint(reference)
    net, meta = load_checkpoint(folder, device=device)
    kind = "the original's" if meta.get("trial_cls_spec") == original.TRIAL_SPEC else "SameSpace"
    how = "the checkpoint's own" if preprocessing == "auto" else "chosen"
    if preprocessing != "auto":
        net.preprocessing = preprocessing
    logger.info("checkpoint %s (%s), preprocessing: %s (%s)", folder, kind, net.preprocessing, how)
    return net, meta


def local_checkpoint_root() -> Path:
    """Where Determined's local Trainer writes checkpoints ($XDG_DATA_HOME/determined)."""
    return Path(appdirs.user_data_dir("determined"))


def local_checkpoint(reference: str) -> tuple[str, int]:
    """A local checkpoint's storage id (UUID) and the batches it had trained, from a UUID or path;
    its checksum is verified when it has one."""
    root = local_checkpoint_root()
    folder = Path(reference) if os.sep in reference else root / reference
    if folder.resolve().parent != root.resolve():
        raise CheckpointError(f"--resume takes a local checkpoint under {root}, not {reference}")
    state = folder / "trial_state.pkl"
    if not state.is_file():
        raise CheckpointError(f"no local checkpoint {folder.name} under {root}")
    if not verify_checksum(folder):  # no record: at least torch must read it, or Determined fails later
        if not (folder / "state_dict.pth").is_file():
            raise CheckpointError(f"{folder} has no state_dict.pth; resume from another checkpoint")
        read_model_state(folder / "state_dict.pth")
    try:
        with state.open("rb") as handle:
            batches = int(pickle.load(handle).get("batches_trained") or 0)  # Determined's own file
    except Exception as exc:  # truncated or not Determined's: unpickling errors vary
        raise CheckpointError(f"cannot read {state}: {first_line(exc, 120)}; resume from another checkpoint") from None
    return folder.name, batches
