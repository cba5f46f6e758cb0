"""samespace/console.py: progress bars off outside a terminal, known library noise dropped only in our runs."""

from __future__ import annotations

import io
import logging

from samespace import console


def test_progress_is_off_outside_a_terminal_or_with_tqdm_disable(monkeypatch):
    monkeypatch.setattr(console.sys, "stderr", io.StringIO())  # not a terminal
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert console.progress(range(3)).disable
    terminal = io.StringIO()
    terminal.isatty = lambda: True
    monkeypatch.setattr(console.sys, "stderr", terminal)
    bar = console.progress(range(3), file=terminal)
    assert not bar.disable and bar.leave is False  # cleared when done: no stale lines, no ESC[A in logs
    monkeypatch.setenv("TQDM_DISABLE", "1")  # read on every call, not once when tqdm is imported
    assert console.progress(range(3), file=terminal).disable


def test_known_noise_is_dropped_at_its_source_and_only_inside_a_run(caplog):
    caplog.set_level(logging.INFO)
    dynamo = logging.getLogger("torch._dynamo.variables.ctx_manager")
    with console.known_noise_silenced():
        dynamo.warning("Profiler record function %s will be ignored", "x")
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/x")
        logging.getLogger("determined").info("rocm-smi not found")
        logging.getLogger("determined").info("detected 0 gpus")  # same logger, other messages stay
        logging.getLogger("samespace").warning("Profiler record function is ours")  # other loggers stay
    dynamo.warning("Profiler record function %s will be ignored", "after")  # filters removed after the run
    assert [r.getMessage() for r in caplog.records] == [
        "detected 0 gpus",
        "Profiler record function is ours",
        "Profiler record function after will be ignored",
    ]


def test_determined_bookkeeping_goes_to_debug_level(caplog):
    core = logging.getLogger("determined.core")
    lines = ("report_progress with progress=0.5", "upload_tensorboard_files()", "status: training")
    caplog.set_level(logging.INFO)
    with console.known_noise_silenced():
        for line in lines:
            core.info(line)
        core.info("report_training_metrics(steps_completed=100)")  # the loss a user reads stays
    assert [r.getMessage() for r in caplog.records] == ["report_training_metrics(steps_completed=100)"]
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    with console.known_noise_silenced():
        core.info(lines[0])
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("DEBUG", lines[0])]
    caplog.clear()
    core.info(lines[0])  # outside our runs, untouched
    assert [r.levelname for r in caplog.records] == ["INFO"]
