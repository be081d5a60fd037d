"""Train one model, or sweep many with -m.  python train.py attention=mla pos=rope2d

Thin entry point: Hydra composes conf/, lmlab validates it (every problem at once, before any data
or model work) and trains in outputs/<run_name>/ (resuming if that directory has a checkpoint).
"""

import os
import sys

# Nothing reaches a model/dataset hub unless the user asks (data.online=true)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from lmlab.config import run_name_from_overrides  # noqa: E402

OmegaConf.register_new_resolver("lmlab_run_name", run_name_from_overrides, replace=True)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lmlab.config import ConfigError, build_config
    from lmlab.registry import UnknownVariantError

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN

    def fail(e: Exception):
        print(f"error in run {hc.runtime.output_dir}:\n{e}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        with open(os.path.join(hc.runtime.output_dir, "error.txt"), "w") as f:
            f.write(str(e) + "\n")  # one failing job must not stop the sweep

    try:  # validated before importing Lightning or touching data
        run = build_config(cfg)
    except (ConfigError, UnknownVariantError) as e:
        return fail(e)
    run.run_dir = hc.runtime.output_dir

    from lmlab.launchers import SubmititRequeue, threads_per_job, under_submitit
    from lmlab.train.checkpointing import StoppedBySignal
    from lmlab.train.run import train

    # parallel sweep jobs share the cores (lmlab/launchers.py): jobs x threads <= cores
    share = threads_per_job(hc.launcher) if multirun and run.trainer.num_threads is None else None
    if share:
        run.trainer.num_threads = share[0]
        print(f"trainer.num_threads={share[0]} ({share[1]})")
    # submitit's time-out/preemption signal: checkpoint first, then submitit requeues this job
    callbacks = [SubmititRequeue(os.path.join(run.run_dir, "checkpoints"))] if under_submitit() else []

    try:
        return train(run, callbacks=callbacks)["val_bpb"]
    except StoppedBySignal as e:  # stop the whole sweep too; rerunning resumes
        print(str(e), file=sys.stderr)
        sys.exit(143)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        return fail(e)


if __name__ == "__main__":
    main()
