"""Train one model, or sweep many with -m.  python train.py attention=mla pos=rope2d

Thin entry point: Hydra composes conf/, lmlab validates it (every problem at once, before any data
or model work) and trains in outputs/<run_name>/ (resuming if that directory has a checkpoint).
Errors: lmlab's own (``lmlab.errors.LmlabError``: config, data, checkpoint and resume refusals) print as
one message (exit 2); any other exception keeps its traceback. In a multirun a failed job writes
``error.txt`` (the full traceback, whatever the error) and the sweep goes on.
"""

import os
import sys

# Nothing reaches a model/dataset hub unless the user asks (data.online=true)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from lmlab.config import prepare_argv, run_name_from_overrides  # noqa: E402

OmegaConf.register_new_resolver("lmlab_run_name", run_name_from_overrides, replace=True)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    import traceback

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lmlab.config import build_config
    from lmlab.errors import LmlabError

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN

    def fail(e: BaseException, clean: bool):
        """lmlab's own errors (``clean``) are one message; anything else keeps its traceback."""
        text = str(e) if clean else "".join(traceback.format_exception(e))
        if not multirun:
            if not clean:
                raise e
            print(f"error in run {hc.runtime.output_dir}:\n{text}", file=sys.stderr)
            sys.exit(2)
        print(f"error in run {hc.runtime.output_dir}:\n{text}", file=sys.stderr)
        os.makedirs(hc.runtime.output_dir, exist_ok=True)
        with open(os.path.join(hc.runtime.output_dir, "error.txt"), "w") as f:
            # the full traceback (with its causes) whatever the error: the console had the short form
            f.write("".join(traceback.format_exception(e)))
        # one failing job must not stop the sweep

    try:  # validated before importing Lightning or touching data
        run = build_config(cfg)
    except LmlabError as e:
        return fail(e, clean=True)
    run.run_dir = hc.runtime.output_dir
    from lmlab.config import resume_target

    run.resume = resume_target(run.resume, run.out_dir)  # a run name or run dir -> its last.ckpt

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
    except LmlabError as e:
        return fail(e, clean=True)
    except Exception as e:
        return fail(e, clean=False)


if __name__ == "__main__":
    sys.argv = prepare_argv(sys.argv)  # resume= paths with '=' and ',' unquoted; sweep folder names
    main()
