"""``train(run)``: one training run in its run directory, resumable, with a summary at the end.

Run directory (stable, never a timestamp; see train.py): ``.lock`` (while a process owns it),
``config.yaml`` (the resolved, validated config), ``metrics.csv``, ``checkpoints/`` (``last.ckpt`` +
exactly the ``trainer.keep_last`` newest ``step-N.ckpt``), ``summary.json``; ``error.txt`` (the
traceback) when an accepted run failed, ``wandb_id.txt`` with W&B on.

Order of a run, so that a refused run leaves its directory as it was:
1. lock the directory (``RunLock``; a second process fails at once naming the owner);
2. remove ``*.tmp`` left by a killed save; pick the newest complete, loadable checkpoint
   (``resolve_resume``; damaged ones are skipped, one line each); refuse a directory with
   ``summary.json`` but no checkpoint (its records would be overwritten); check the checkpoint's
   config against this run (``RESUME_MAY_DIFFER`` lists what may differ);
3. only then write: ``config.yaml``, remove a stale ``error.txt``; train; write ``summary.json``.
Any failure after step 3 began leaves ``error.txt`` with the full traceback.

Extending a run: raise ``trainer.max_steps`` and run the same command; training continues in place
from its newest checkpoint, keeping its metrics and validation history. The warmup + cosine LR schedule
is a function of ``max_steps``, recomputed for the new horizon: from the resume step on, the LR follows
the cosine of the *new* length (it jumps up if the old run had decayed to its minimum), so an extended
run is not identical to one trained with the larger ``max_steps`` from the start.

Processes (``trainer.strategy=ddp``, ``fsdp``; docs/scale.md): every rank runs ``train``; only rank
zero locks and writes the run directory (config.yaml, summary.json, metrics.csv, probe.json, plots)
and prints. A run that ended by early stopping or by ``trainer.max_time`` and is run again with
``resume=auto`` returns its summary at once. ``summary.json`` says why the run stopped (``stopped_by``:
max_steps, max_time, early_stop) and its ``mfu`` (None when the device's peak is unknown; lmlab.train.mfu).

Threads: the trainer process uses ``trainer.num_threads`` intra-op threads (default: every core);
tokenizer workers use one each and mostly sleep on a full prefetch queue (docs/usage.md: threads and workers).
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
from lmlab.errors import ResumeError, RunDirError


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def configure_threads(run) -> int:
    n = run.trainer.num_threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def train(run, log=print, callbacks=()) -> dict:
    """Train ``run`` in its run directory; ``callbacks`` are extra Lightning callbacks (tests use them).

    Order (module docstring): lock, resume resolution and compatibility check, and only then any write."""
    from lmlab.train.checkpointing import RunLock

    run_dir = Path(run.run_dir or Path(run.out_dir) / run.run_name)
    if not _launcher_rank_zero():  # a DDP worker Lightning started: rank 0 owns and writes the directory
        return _train_locked(run, run_dir, log, callbacks, owner=False)
    with RunLock(run_dir, log):  # the first thing written into the run directory
        return _train_locked(run, run_dir, log, callbacks)


def _launcher_rank_zero() -> bool:
    """False in the extra processes of a multi-process launch (Lightning's DDP launcher, SLURM, torchrun),
    which run this same function: only the global rank 0 takes the lock and writes run files."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _accept_resume(run, run_dir: Path, ckpt_dir: Path, config: dict, log) -> tuple[str | None, dict | None]:
    """The checkpoint to resume from and its ``lmlab`` section, or refusals; writes nothing."""
    from lmlab.train.checkpoint import read_checkpoint
    from lmlab.train.checkpointing import resolve_resume

    ckpt_path = resolve_resume(run.resume, ckpt_dir, log)
    fresh = str(run.resume).lower() in ("false", "no")
    if ckpt_path is None and not fresh and (run_dir / "summary.json").exists():
        raise RunDirError(
            f"{run_dir} holds the records of a finished run (summary.json) but no checkpoint to resume "
            "from; rerunning would overwrite them. Move that directory away, choose another run_name=, "
            "or pass resume=false to train it over"
        )
    if not ckpt_path:
        return None, None
    state = read_checkpoint(ckpt_path)  # the same safe reader Lightning's resume goes through
    task_state = state["lmlab"]
    _check_compatible(task_state["config"], config, ckpt_path)
    world = run.trainer.devices * run.trainer.num_nodes
    if run.trainer.devices >= 1 and task_state.get("world_size") not in (None, world):
        raise ResumeError(f"cannot resume from {ckpt_path}: written with world size {task_state['world_size']}, "
                          f"this run has trainer.devices x trainer.num_nodes = {world}")
    return ckpt_path, {**task_state, "global_step": int(state["global_step"])}


def _train_locked(run, run_dir: Path, log, callbacks, owner: bool = True) -> dict:
    from lmlab.train.checkpointing import StoppedBySignal, clean_tmp

    t0 = time.time()
    # Lightning's start-up banners (GPU available, tips) are noise in a lab log; warnings stay
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    ckpt_dir = run_dir / "checkpoints"
    config = to_dict(run)
    if owner:
        for d in (ckpt_dir, run_dir):  # partial files of a save that was killed; never a complete record
            clean_tmp(d, log)
    ckpt_path, task_state = _accept_resume(run, run_dir, ckpt_dir, config, log)
    if not owner:
        return _fit(run, run_dir, ckpt_dir, config, ckpt_path, task_state, _silent, callbacks, time.time(),
                    zero=False)
    if ckpt_path:
        done = _finished_early(run_dir, task_state["global_step"], run.resume)
        if done is not None:  # training on would undo the decision to stop; nothing is written
            log(f"done already: stopped by {done['stopped_by']} at step {task_state['global_step']}; "
                f"summary in {run_dir / 'summary.json'}")
            return done

    # ---- accepted: from here on the run directory is this run's
    if str(run.resume).lower() in ("false", "no"):
        old = sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.exists() else []
        for f in old:  # asked to start over: stale checkpoints would outrank the new ones
            f.unlink()
        if old:
            log(f"resume=false: removed {len(old)} old checkpoint(s) from {ckpt_dir}")
        for name in ("summary.json", "wandb_id.txt"):  # they describe the run being replaced
            (run_dir / name).unlink(missing_ok=True)
    (run_dir / "error.txt").unlink(missing_ok=True)  # a stale failure of an earlier attempt
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        return _fit(run, run_dir, ckpt_dir, config, ckpt_path, task_state, log, callbacks, t0)
    except StoppedBySignal:
        raise
    except BaseException as e:
        if not isinstance(e, (KeyboardInterrupt, SystemExit)):
            import traceback

            # every failure of an accepted run leaves its full traceback beside its records
            (run_dir / "error.txt").write_text("".join(traceback.format_exception(e)))
        raise


def _fit(run, run_dir, ckpt_dir, config, ckpt_path, task_state, log, callbacks, t0, zero: bool = True) -> dict:
    import lightning as L

    from lmlab.registry import TASK
    from lmlab.train.checkpointing import AtomicCheckpointIO, CheckpointWriter, StoppedBySignal
    from lmlab.train.logging import RunCSVLogger, wandb_logger
    from lmlab.train.progress import StepBar, early_stopping, progress_callback, start_block, stopped_by

    threads = configure_threads(run)
    L.seed_everything(run.seed, workers=False, verbose=False)
    resume_step = None
    if ckpt_path:
        resume_step = task_state["global_step"]
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
    writer = CheckpointWriter(ckpt_dir, every=run.trainer.val_every, keep_last=run.trainer.keep_last, log=log)
    progress, es = progress_callback(run), early_stopping(run)
    trainer = L.Trainer(
        accelerator=run.trainer.accelerator, devices=run.trainer.devices, num_nodes=run.trainer.num_nodes,
        strategy=run.trainer.strategy, precision=run.trainer.precision,
        max_steps=run.trainer.max_steps, val_check_interval=run.trainer.val_every,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, limit_val_batches=1.0,
        log_every_n_steps=run.trainer.log_every, logger=loggers,
        # the one checkpoint writer (lmlab.train.checkpointing): no ModelCheckpoint, so no last-vN.ckpt
        callbacks=[*callbacks, writer, progress, *([es] if es else [])],
        plugins=[AtomicCheckpointIO()], enable_checkpointing=False,
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
        writer.restore_signals()
        if writer.requested:  # no summary for an unfinished run; the same command resumes it
            import signal

            name = signal.Signals(writer.signum).name
            raise StoppedBySignal(
                f"stopped by {name} at step {trainer.global_step}; checkpoint {ckpt_dir / 'last.ckpt'} "
                "(run the same command again to resume)", writer.signum)
        if not module.val_history or module.val_history[-1]["step"] != trainer.global_step:
            trainer.validate(module, datamodule=task.datamodule, verbose=False)
            module.val_history.append({"step": trainer.global_step, **_val_now(trainer)})
        writer.save_last(trainer)  # after the final validation: a rerun finds it in val_history
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
        if zero:  # one writer of the run's records (probe.json, plots, summary.json)
            summary.update(task.on_fit_end(run_dir) or {})
            _write_json(run_dir / "summary.json", summary)
        ent = summary.get("val_byte_unigram_entropy")
        log(f"done: step {summary['step']}, val bits/byte {summary['val_bpb']:.4f}"
            + (f" (byte-unigram entropy of the same text: {ent:.4f})" if ent == ent and ent else "")
            + f"; summary in {run_dir / 'summary.json'}")
        if wb is not None:
            wb.set_summary({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        return summary
    finally:
        writer.restore_signals()
        if wb is not None:
            import wandb

            try:
                wandb.finish()
            except Exception as e:  # noqa: BLE001 - W&B trouble must never hide the run's own outcome
                print(f"warning: W&B finish failed ({type(e).__name__}: {e})")


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


# Keys that may differ between a checkpoint and the run resuming it (fnmatch patterns): they change
# when and how the run is observed, stored or stopped, not what a step computes. Everything else
# (model, attention, pos, tokenizer, data incl. num_workers, task, optim, seed, trainer.precision...)
# must match. trainer.max_steps may differ to extend a run: the cosine LR schedule is recomputed for
# the new horizon (see the module docstring).
RESUME_MAY_DIFFER = (
    "trainer.max_steps", "trainer.val_every", "trainer.log_every", "trainer.keep_last",
    "trainer.limit_val_batches", "trainer.num_threads", "trainer.progress_bar", "trainer.entropy_baseline",
    "trainer.early_stop.*", "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
    "trainer.deterministic", "trainer.max_time", "trainer.compile", "trainer.compile_backend",
    "logger.*", "probe.*", "run_name", "sweep_name", "out_dir", "run_dir", "resume", "cache_dir",
)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_compatible(saved: dict | None, current: dict, ckpt_path) -> None:
    """A checkpoint resumes only the run that wrote it: every key outside ``RESUME_MAY_DIFFER`` must
    match (world size is checked separately); all differences are named at once."""
    if not saved:
        return
    import dataclasses
    from fnmatch import fnmatchcase

    from lmlab.config import ModelConfig

    # model keys added to lmlab after the checkpoint was written hold their (behaviour-preserving) defaults
    saved = {**saved, "model": {**dataclasses.asdict(ModelConfig()), **(saved.get("model") or {})}}
    old, new = _flat(saved), _flat(current)
    # a key the checkpoint does not record was added to lmlab later: its default keeps the old behaviour
    keys = [k for k in sorted(set(old) | set(new))
            if k in old and not any(fnmatchcase(k, p) for p in RESUME_MAY_DIFFER)]
    diff = [f"{k}: checkpoint {old.get(k)!r}, this run {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    if diff:
        raise ResumeError(
            f"cannot resume from {ckpt_path}: the run that wrote it differs in\n  - " + "\n  - ".join(diff)
            + "\nuse another run_name=, or resume=false to start this directory over"
        )


def _val_now(trainer) -> dict:
    m = trainer.callback_metrics
    return {"val_loss": float(m["val/loss"]), "val_bpb": float(m["val/bpb"])}
