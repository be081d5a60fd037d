"""Train one model, or sweep many with -m.  python train.py attention=mla pos=rope2d

Thin entry point: Hydra composes conf/, lmlab validates it (every problem at once, before any data
or model work) and trains in outputs/<run_name>/ (resuming if that directory has a checkpoint).
Errors: lmlab's own (``lmlab.errors.LmlabError``: config, data, checkpoint and resume refusals) print as
one message (exit 2); any other exception keeps its traceback. A run that fails after its directory
was accepted leaves ``error.txt`` (the full traceback; lmlab.train.run). An invalid config writes
nothing: the empty directory Hydra made for it is removed (Hydra's ``.hydra/`` and job log are off:
conf/config.yaml). SIGTERM / SIGINT checkpoint at the next step boundary and exit 143 / 130.
In a multirun a failed job writes ``error.txt`` (an invalid config's too, with its composed config in
``.hydra/config.yaml`` for ``lmlab.report``) and the sweep goes on; at the end the sweep prints one
line per failed job and exits 1.
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

FAILED: list[tuple[str, str]] = []  # (job dir, first line of its error), for the end-of-sweep report


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    import traceback

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lmlab.config import build_config
    from lmlab.errors import LmlabError

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN

    def fail(e: BaseException, clean: bool, config_error: bool = False):
        """lmlab's own errors (``clean``) are one message; anything else keeps its traceback."""
        text = str(e) if clean else "".join(traceback.format_exception(e))
        out = hc.runtime.output_dir
        if not multirun:
            if config_error:
                _remove_if_empty(out)  # Hydra made it before validation; nothing of ours is in it
            if not clean:
                raise e
            print(f"error in run {out}:\n{text}", file=sys.stderr)
            sys.exit(2)
        print(f"error in run {out}:\n{text}", file=sys.stderr)
        FAILED.append((out, (str(e).strip().splitlines() or [type(e).__name__])[0]))
        if config_error:  # the job's folder is the sweep's record of this failure
            os.makedirs(os.path.join(out, ".hydra"), exist_ok=True)
            OmegaConf.save(cfg, os.path.join(out, ".hydra", "config.yaml"))
            with open(os.path.join(out, "error.txt"), "w") as f:
                f.write("".join(traceback.format_exception(e)))
        # one failing job must not stop the sweep; train() wrote error.txt if the run had begun

    try:  # validated before importing Lightning or touching data
        run = build_config(cfg)
    except LmlabError as e:
        return fail(e, clean=True, config_error=True)
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
        sys.exit(e.exit_code)
    except LmlabError as e:
        return fail(e, clean=True)
    except Exception as e:
        return fail(e, clean=False)


def _remove_if_empty(path: str) -> None:
    try:
        os.rmdir(path)  # only succeeds on an empty directory
    except OSError:
        pass


def report_failed_jobs() -> int:
    """After a sweep: one line per failed job on stderr; the exit status (1 if any failed)."""
    if not FAILED:
        return 0
    print(f"sweep finished with {len(FAILED)} failed job(s):", file=sys.stderr)
    for job, first in FAILED:
        print(f"  FAILED {job}: {first}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.argv = prepare_argv(sys.argv)  # resume= paths with '=' and ',' unquoted; sweep folder names
    if any(a in ("-h", "--help", "--cfg", "--info") or a.startswith("--cfg") for a in sys.argv[1:]):
        main()  # Hydra's own flags
        sys.exit(0)
    from lmlab.config import check_override_keys

    problem = check_override_keys(sys.argv[1:])  # Hydra would advise '+key=', which lmlab then refuses
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)
    main()
    sys.exit(report_failed_jobs())
