"""``train(run)``: one training run in its run directory, resumable, with a summary at the end.

Run directory (stable, never a timestamp; see train.py): ``config.yaml`` (the resolved, validated
config), ``metrics.csv``, ``checkpoints/`` (``last.ckpt`` + the ``trainer.keep_last`` newest
``step-N.ckpt``), ``summary.json``. Running the same command again resumes from ``last.ckpt``.

Processes (``trainer.strategy=ddp``, ``fsdp``; docs/scale.md): every rank runs this function; only rank
zero writes the run directory (config.yaml, summary.json, metrics.csv, probe.json, plots) and prints;
checkpoints are written by Lightning on rank zero. A run that ended by early stopping or by
``trainer.max_time`` and is run again with ``resume=auto`` returns its summary at once.
``summary.json`` says why the run stopped (``stopped_by``: max_steps, max_time, early_stop) and its
``mfu`` (None when the device's peak is unknown; lmlab.train.mfu).

Threads: the trainer process uses ``trainer.num_threads`` intra-op threads (default: every core);
tokenizer workers use one each and mostly sleep on a full prefetch queue (README: threads).
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path

import torch
import yaml

from lmlab.config import to_dict
from lmlab.errors import ResumeError


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def configure_threads(run) -> int:
    n = run.trainer.num_threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def train(run, log=print, callbacks=()) -> dict:
    """Train ``run`` in its run directory; ``callbacks`` are extra Lightning callbacks (tests use them)."""
    import lightning as L
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lmlab.registry import TASK
    from lmlab.train.checkpoint import read_checkpoint
    from lmlab.train.checkpointing import AtomicCheckpointIO, GracefulStop, StoppedBySignal, resolve_resume
    from lmlab.train.logging import RunCSVLogger, wandb_logger
    from lmlab.train.progress import StepBar, early_stopping, progress_callback, start_block, stopped_by

    zero = rank_zero_only.rank == 0  # from the launcher's env (RANK/LOCAL_RANK), set before any process group
    if not zero:  # one voice: the other ranks' lines would repeat rank zero's
        log = _silent

    t0 = time.time()
    # Lightning's start-up banners (GPU available, tips) are noise in a lab log; warnings stay
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    run_dir = Path(run.run_dir or Path(run.out_dir) / run.run_name)
    ckpt_dir = run_dir / "checkpoints"
    run_dir.mkdir(parents=True, exist_ok=True)
    config = to_dict(run)
    if zero:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    threads = configure_threads(run)
    L.seed_everything(run.seed, workers=False, verbose=False)

    ckpt_path = resolve_resume(run.resume, ckpt_dir)
    if zero and str(run.resume).lower() in ("false", "no") and ckpt_dir.exists():
        old = sorted(ckpt_dir.glob("*.ckpt"))
        for f in old:  # asked to start over: stale checkpoints would outrank the new ones
            f.unlink()
        if old:
            log(f"resume=false: removed {len(old)} old checkpoint(s) from {ckpt_dir}")
    resume_step = None
    if ckpt_path:
        state = read_checkpoint(ckpt_path)  # the same safe reader Lightning's resume goes through
        resume_step = state["global_step"]
        task_state = state["lmlab"]
        _check_compatible(task_state["config"], config, ckpt_path)
        done = _finished_early(run_dir, resume_step, run.resume)
        if done is not None:
            log(f"done already: stopped by {done['stopped_by']} at step {resume_step}; "
                f"summary in {run_dir / 'summary.json'}")
            return done
        log(f"resuming from {ckpt_path} at step {resume_step}")
    task = TASK.get(run.task.name)(run, log=log)
    task.datamodule.setup("fit")
    if ckpt_path:
        task.set_start_batch(task_state["batches_seen"])
    module = task.module()
    if run.trainer.compile:  # in place: state_dict keys stay model.*, so checkpoints load either way
        module.model.compile(backend=run.trainer.compile_backend)
    log("run:\n" + start_block(run, module.model.n_params(), threads, run_dir, choices=_hydra_choices()))

    # rank zero logs (Lightning calls loggers there only); the others must not even open metrics.csv
    loggers = [RunCSVLogger(str(run_dir), resume_step)] if zero else []
    wb = wandb_logger(run, str(run_dir), config) if run.logger.wandb and zero else None
    if wb is not None:
        loggers.append(wb)
    ckpt_cb = ModelCheckpoint(
        dirpath=ckpt_dir, filename="step-{step}", auto_insert_metric_name=False,
        every_n_train_steps=run.trainer.val_every, save_top_k=run.trainer.keep_last,
        monitor="step", mode="max", save_last=True,
    )
    stopper = GracefulStop(ckpt_dir)
    progress, es = progress_callback(run), early_stopping(run)
    trainer = L.Trainer(
        accelerator=run.trainer.accelerator, devices=run.trainer.devices, num_nodes=run.trainer.num_nodes,
        strategy=run.trainer.strategy, precision=run.trainer.precision,
        max_steps=run.trainer.max_steps, val_check_interval=run.trainer.val_every,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, limit_val_batches=1.0,
        log_every_n_steps=run.trainer.log_every, logger=loggers,
        callbacks=[ckpt_cb, stopper, progress, *([es] if es else []), *callbacks],
        plugins=[AtomicCheckpointIO()],
        deterministic=run.trainer.deterministic,
        enable_progress_bar=isinstance(progress, StepBar), enable_model_summary=False,
        default_root_dir=str(run_dir),
        accumulate_grad_batches=run.trainer.accumulate_grad_batches, max_time=run.trainer.max_time,
        # each rank's validation share is cut by the DataModule (every block once); Lightning's
        # DistributedSampler would pad shares with repeated blocks
        use_distributed_sampler=False,
    )
    try:
        # tensors and plain data only (lmlab.train.checkpoint); AtomicCheckpointIO reads it safely too
        trainer.fit(module, datamodule=task.datamodule, ckpt_path=ckpt_path, weights_only=True)
        if stopper.requested:  # no summary for an unfinished run; the same command resumes it
            raise StoppedBySignal(f"stopped by SIGTERM at step {trainer.global_step}; checkpoint in {ckpt_dir}")
        trainer.save_checkpoint(str(ckpt_dir / "last.ckpt"))
        if not module.val_history or module.val_history[-1]["step"] != trainer.global_step:
            trainer.validate(module, datamodule=task.datamodule, verbose=False)
            module.val_history.append({"step": trainer.global_step, **_val_now(trainer)})
        last = module.val_history[-1]
        summary = {
            "run_name": run.run_name,
            "sweep_name": run.sweep_name,
            "step": trainer.global_step,
            "val_loss": last["val_loss"],
            "val_bpb": last["val_bpb"],
            "train_loss": module.last_train_loss,
            # over all ranks (each counts its own batches, all of one size), so figures compare across scales
            "tokens_seen": module.tokens_seen * trainer.world_size,
            "tokens_per_sec": module.tokens_per_sec * trainer.world_size,
            "wall_time_s": time.time() - t0,
            "threads": threads,
            "num_workers": run.data.num_workers,
            "world_size": trainer.world_size,
            "stopped_by": _stopped_by(stopped_by, trainer, es, run),
            "mfu": module.mfu(module.tokens_per_sec),
            **task.summary(),
        }
        if zero:  # probe.json, plots: run-directory writes
            summary.update(task.on_fit_end(run_dir) or {})
            _write_json(run_dir / "summary.json", summary)
        ent = summary.get("val_byte_unigram_entropy")
        log(f"done: step {summary['step']}, val bits/byte {summary['val_bpb']:.4f}"
            + (f" (byte-unigram entropy of the same text: {ent:.4f})" if ent == ent and ent else "")
            + f"; summary in {run_dir / 'summary.json'}")
        if wb is not None:
            wb.log_metrics({f"summary/{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
        return summary
    finally:
        if wb is not None:
            import wandb

            wandb.finish()


def _silent(*_args, **_kwargs) -> None:
    pass


def _hydra_choices() -> dict | None:
    """Hydra's group choices (``model: micro``) when running under Hydra; None otherwise (then the
    start block names each group from its config's ``name``)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001 - a description must never stop a run
        return None


def _stopped_by(stopped_by, trainer, es, run) -> str:
    """``stopped_by`` (progress.py) plus max_time: a fit that ended before max_steps with no other
    cause ran out of its wall-clock budget (Lightning's Timer stops it)."""
    why = stopped_by(trainer, es)
    if why == "max_steps" and run.trainer.max_time and trainer.global_step < run.trainer.max_steps:
        return "max_time"
    return why


def _finished_early(run_dir: Path, step: int, resume) -> dict | None:
    """The summary of a run that already ended by early stopping or max_time at ``step`` (rerun with
    resume=auto): training it on would undo the decision to stop."""
    path = run_dir / "summary.json"
    if str(resume) not in ("auto", "", "none", "None") or not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if summary.get("stopped_by") in ("early_stop", "max_time") and summary.get("step") == step:
        return summary
    return None


RESUME_MUST_MATCH = ("model", "attention", "pos", "tokenizer", "data", "task", "seed")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_compatible(saved: dict | None, current: dict, ckpt_path) -> None:
    """A checkpoint resumes only the run that wrote it: every key that shapes the model or the data
    stream must match; all differences are named at once."""
    if not saved:
        return
    import dataclasses

    from lmlab.config import ModelConfig

    # model keys added to lmlab after the checkpoint was written hold their (behaviour-preserving) defaults
    saved = {**saved, "model": {**dataclasses.asdict(ModelConfig()), **(saved.get("model") or {})}}
    old = _flat({k: saved.get(k) for k in RESUME_MUST_MATCH})
    new = _flat({k: current.get(k) for k in RESUME_MUST_MATCH})
    diff = [f"{k}: checkpoint {old.get(k)!r}, this run {new.get(k)!r}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        raise ResumeError(
            f"cannot resume from {ckpt_path}: the run that wrote it differs in\n  - " + "\n  - ".join(diff)
            + "\nuse another run_name=, or resume=false to start this directory over"
        )


def _val_now(trainer) -> dict:
    m = trainer.callback_metrics
    return {"val_loss": float(m["val/loss"]), "val_bpb": float(m["val/bpb"])}
