"""Training: :func:`train` maximises the ELBO of a VLAE, exactly resumably.

:func:`train` maximises the ELBO (with free bits and KL warm-up if configured)
with Adamax or Adam, keeps Polyak-averaged weights for evaluation, validates,
logs to ``metrics.jsonl`` (and TensorBoard), and writes checkpoints from which
``resume=True`` continues *exactly*: the same final weights as a run that was
never interrupted.

The package, in the order a reader meets it:

- :mod:`~vlae.train.loop`: :func:`train` and the :class:`Trainer` (train step,
  record, end of epoch, finish), the loop read top to bottom;
- :mod:`~vlae.train.set_up`: what runs once before the loop (data, model,
  optimiser, the state of a fresh or resumed run), functions the :class:`Trainer`
  calls in the order of the run's random draws;
- :mod:`~vlae.train.step`: the step as one function of device tensors, with the
  skip decision taken on the device, replayed as a CUDA graph on one GPU;
- :mod:`~vlae.train.schedules`: soft free bits, KL warm-up, learning rate;
- :mod:`~vlae.train.validation`: the validation pass (:func:`validate`);
- :mod:`~vlae.train.run_dir`, :mod:`~vlae.train.resume`, :mod:`~vlae.train.metrics`,
  :mod:`~vlae.train.interrupt`: the run's folder, exact resumption, its log, and
  stopping on signals. The run's data (:func:`resolve_data`, :func:`check_data_fits`)
  come from :mod:`vlae.data.checks`; :mod:`~vlae.train.data`, their old home,
  re-exports them for one release.

Data live on the training device as one ``uint8`` tensor; every epoch draws a
seeded permutation (and, for dynamically binarized data, fresh binary images)
from one ``torch.Generator``, and batches are slices of that permutation. The
images past the epoch's last full batch are left out of that epoch
(``drop_last``, the authors' convention), so every step has the same shape.

The host never waits for the device inside a step: it reads the device's
statistics every ``log_every`` steps (and before validating or checkpointing).
Skipped steps, their warnings and a divergence stop are therefore reported at
those reads, each with the step it happened at.

Exact resumption needs the same hardware, library versions and number of
CPU threads (floating-point reductions are ordered by thread count); the
checkpoint records the thread count and a resumed run says when it differs.
A resumed run on a GPU captures its CUDA graph again after a few eager steps;
graph replays run the same kernels as eager steps.

Nothing is lost or mixed silently:

- a run folder holds one run: a non-empty folder is refused unless the run
  resumes it (``resume=True``) or replaces it (``overwrite=True``);
- a checkpoint records the identity of its data
  (:func:`vlae.data.dataset_identity`: name, split, size, SHA-256 of the
  images), and resuming on other data is refused;
- on resume, ``metrics.jsonl`` records past the checkpoint's step (written by
  the interrupted session) are dropped, so the log is one history, and a
  ``best.pt`` that a kill left behind its checkpoint is brought up to date;
- an update that leaves a non-finite loss, gradient or weight is undone
  exactly (weights, optimiser state, Polyak average) and logged as skipped
  (with no made-up numbers); ``max_skipped_steps`` consecutive ones stop the
  run with an error;
- SIGINT and SIGTERM (a scheduler's preemption) finish the current step,
  write a resumable checkpoint and raise :class:`Interrupted`; checkpoints are
  also written every ``checkpoint_steps`` steps and ``checkpoint_seconds`` seconds.

Distributed training: launch with ``torchrun --nproc_per_node N -m vlae train
...``; each process takes every N-th index of the epoch's permutation,
``batch_size`` is per process, gradients are averaged by
DistributedDataParallel (whose steps stay eager: no CUDA graph), and only
rank 0 writes files.

Example:
    >>> from vlae.config import get_preset
    >>> cfg = get_preset("tiny"); cfg.train.max_steps = 20
    >>> summary = train(cfg, "runs/tiny")  # doctest: +SKIP
    >>> summary["steps"]  # doctest: +SKIP
    20
"""

from ..data import check_data_fits, resolve_data
from .interrupt import Interrupted
from .loop import LOG_EVERY, Trainer, TrainerState, train
from .run_dir import prepare_run_dir
from .schedules import kl_warmup_weight, lr_lambda, polyak_multi_avg_fn, soft_free_bits_update
from .step import TrainStep
from .validation import validate

__all__ = [
    "train",
    "Trainer",
    "TrainerState",
    "TrainStep",
    "validate",
    "polyak_multi_avg_fn",
    "soft_free_bits_update",
    "kl_warmup_weight",
    "lr_lambda",
    "resolve_data",
    "check_data_fits",
    "prepare_run_dir",
    "Interrupted",
    "LOG_EVERY",
]
