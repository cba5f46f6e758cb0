"""The dedup batch job's entry point: ``det experiment create dedup.yaml .`` (samespace/batch.py).

Off a cluster it says so in one line; ``model_inference.py dedup`` is the same dedup on one machine.
"""

from __future__ import annotations

import logging
import sys

from samespace.errors import exit_code


def main() -> int:
    import determined as det

    from samespace import batch

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = det.get_cluster_info()
    if info is None or info.task_type != "TRIAL":
        print(
            "error: dedup_job.py runs as a Determined trial: det experiment create dedup.yaml . "
            "(on one machine: python model_inference.py dedup CHECKPOINT FOLDER)",
            file=sys.stderr,
        )
        return 2
    return exit_code(lambda: batch.run(batch.JobSettings.from_hparams(info.trial.hparams)))


if __name__ == "__main__":
    sys.exit(main())
