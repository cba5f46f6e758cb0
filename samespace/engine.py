"""The frozen trunk through ONNX Runtime on the CPU: exported once, cached, checked on read.

The trunk (features + avgpool + flatten) never trains, so on the CPU it can run in an engine
built for inference: exported once to ONNX (the TorchScript exporter, which needs neither onnx
nor onnxscript), kept in the cache folder under a key of its weights, preprocessing, opset and
the torch and onnxruntime versions, and run by onnxruntime's CPU provider (measured in
benchmarks/run.py against torch eager channels_last, side by side). Preprocessing stays in torch
(``features.trunk_features``); only the trunk's forward pass comes here. CUDA stays torch. Any
failure (no onnxruntime, an export or session that fails) falls back to torch with one log line.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from samespace import reports, settings
from samespace.errors import ConfigError, OutputError, first_line

logger = logging.getLogger("samespace.engine")

ENGINES = settings.ENGINES
OPSET = 17
INPUT, OUTPUT = "images", "features"
EXAMPLE_SHAPE = (1, 3, 256, 256)  # the batch axis is dynamic; the trunk's pooling takes any size


def choose(name: str, device: torch.device | str) -> str:
    """The engine ``--engine name`` means on ``device``: auto is onnx on the CPU, torch on CUDA."""
    if name not in ENGINES:
        raise ConfigError(f"--engine {name!r}: use one of {', '.join(ENGINES)}")
    if torch.device(device).type != "cpu":
        if name == "onnx":
            logger.info("engine: onnx runs on the CPU only; the trunk on %s stays torch", device)
        return "torch"
    return "onnx" if name == "auto" else name


def cache_folder() -> Path:
    """$XDG_CACHE_HOME/samespace/engine: exports are rebuilt on demand, so a cache, not data."""
    return settings.user_cache_dir() / "engine"


def export_key(fingerprint: str, preprocessing: str) -> str:
    """SHA-256 naming one export: trunk weights, preprocessing, opset, torch and onnxruntime."""
    import onnxruntime

    what = f"{fingerprint}|{preprocessing}|opset{OPSET}|torch{torch.__version__}|ort{onnxruntime.__version__}"
    return hashlib.sha256(what.encode()).hexdigest()


def export_bytes(trunk: torch.nn.Module) -> bytes:
    """The trunk as an ONNX model (float32, NCHW input, dynamic batch axis)."""
    trunk = trunk.float().eval().cpu()  # .float() and .cpu() copy only what is not already so
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice, not ours to act on
        warnings.simplefilter("ignore")
        torch.onnx.export(
            trunk,
            (torch.zeros(EXAMPLE_SHAPE),),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )
    return buffer.getvalue()


def cached_export(trunk: torch.nn.Module, key: str, folder: Path) -> bytes:
    """The export under ``key`` in ``folder``: read when its SHA-256 sidecar matches, else (missing,
    or damaged with one warning) exported again and written atomically, the model then its sidecar.
    A cache that cannot be written costs the next start-up, not this run."""
    path = folder / f"{key}.onnx"
    sidecar = path.with_name(path.name + ".sha256")
    if path.is_file():
        try:
            payload = path.read_bytes()
            if hashlib.sha256(payload).hexdigest() == sidecar.read_text().strip():
                return payload
        except OSError:
            pass
        logger.warning("engine: the cached export %s is damaged (checksum wrong); exporting the trunk again", path)
    payload = export_bytes(trunk)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with reports.atomic_write(path, "wb") as handle:  # the model first, then the sidecar that vouches for it
            handle.write(payload)
        with reports.atomic_write(sidecar) as handle:
            handle.write(hashlib.sha256(payload).hexdigest())
    except (OSError, OutputError) as exc:
        logger.warning("engine: cannot cache the export in %s (%s); exporting again next time", folder, first_line(exc))
    return payload


class OnnxTrunk:
    """A trunk run by onnxruntime's CPU provider; called like the module (float32 batch in, out)."""

    name = "onnx"

    def __init__(self, model: bytes, threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads)  # the cores the decoders leave (scoring.thread_split)
        options.inter_op_num_threads = 1  # one chain of layers: no parallel branches to run
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(inputs.detach().cpu().float().numpy())  # NCHW, as exported
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: array})[0])


def load(
    trunk: torch.nn.Module,
    fingerprint: str,
    device: torch.device | str = "cpu",
    name: str = "auto",
    *,
    preprocessing: str = "ours",
    threads: int | None = None,
    folder: Path | None = None,
) -> OnnxTrunk | None:
    """The engine for ``trunk`` on ``device``, or None for torch (chosen, or fallen back to with one
    warning line: onnxruntime missing, or the export or session failing)."""
    if choose(name, device) == "torch":
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        logger.warning("engine: onnxruntime is not importable (%s); running the trunk in torch", first_line(exc))
        return None
    try:
        model = cached_export(trunk, export_key(fingerprint, preprocessing), folder or cache_folder())
        return OnnxTrunk(model, threads or torch.get_num_threads())
    except Exception as exc:  # the exporter and onnxruntime raise many types; any of them means torch
        logger.warning(
            "engine: the ONNX trunk failed (%s: %s); running the trunk in torch",
            type(exc).__name__,
            first_line(exc, 160),
        )
        return None


def label(engine: OnnxTrunk | None) -> str:
    """The name of the engine that ran: onnx, or torch for None."""
    return "torch" if engine is None else engine.name
