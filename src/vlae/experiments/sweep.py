"""The collapse sweep (``vlae sweep``): how much the latent code carries as the decoder sees more.

The paper's central claim (section 3, "information preference"): information
that the autoregressive decoder can model on its own is modelled locally, and
``z`` only carries what the decoder cannot see. So as the PixelCNN's receptive
field grows from a few pixels to the whole image, the KL term (the nats ``z``
carries per image) should fall towards zero -- posterior collapse -- and an AF
prior should hold on to more information than a Gaussian one at the same
receptive field.

This module trains one model per grid point

    decoder_layers x decoder_kernel x prior

from a base preset, each for the same budget (seconds or steps), evaluates it
on the same test subset (single-sample KL and ELBO, and the IW bound with ``k``
samples), and writes ``sweep.csv``, ``sweep.json``, ``sweep.md`` and two plots
(``kl_vs_receptive_field.png``, ``nll_vs_receptive_field.png``) to the sweep
directory. Every run lives in its own folder with its own ``results.json``; a
rerun skips finished runs and resumes half-finished ones from their checkpoint,
so an interrupted sweep is continued by running the same command again. A
table holds the runs of one setting: a rerun with another budget (or any other
training or evaluation option) into a folder holding runs, finished or
interrupted, is refused before anything is written.

The runner (:func:`vlae.experiments.runner.run_tasks`) is shared with
:mod:`vlae.experiments.ablation`: worker
processes, each run in a fresh process with ``--threads`` threads. Ctrl-C or
SIGTERM (a scheduler's preemption) stops every run at a checkpoint, as
``vlae train`` does, and the command exits with 130 or 143 after one line.

Free bits (the presets' ``model.free_bits``) hold the KL at a floor, which
hides the collapse; switch them off to see the bound's own preference. Equal
steps (``--max-steps``) compare the decoders at the same point of training;
equal time (``--budget``) gives deep decoders fewer steps.

Example (2 priors x 5 depths x 2 kernels = 20 runs)::

    vlae sweep --out runs/sweep --preset mnist-small --set model.free_bits=0 \\
        --max-steps 1000 --layers 1,2,4,8,16 --kernels 3,5 --priors gaussian,af --jobs 2
    vlae sweep --out runs/sweep-300s --preset mnist-small --budget 300 ...   # 5 minutes per run instead
    vlae sweep --report runs/sweep          # tables and plots from finished runs
    vlae sweep --out runs/sweep-cifar --preset cifar-small --fields 4x2,5x3,7x4,9x5 --priors af \\
        --budget 1200 --k 64 --eval-subset 200   # colour: the paper's receptive fields AxB (column rf_name)

Worker processes start with ``forkserver`` (or ``spawn``), which import the
main module again: a script that calls :func:`run_sweep` needs the usual
``if __name__ == "__main__":`` guard.

From Python:
    >>> from vlae.config import get_preset
    >>> tasks = sweep_tasks(get_preset("tiny"), "masked", [1, 4], [3], ["af"])
    >>> [t.name for t in tasks]
    ['masked-L1-k3-af', 'masked-L4-k3-af']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import Config, config_from_dict
from ..errors import VLAEError
from .receptive_field import receptive_field_record
from .report import estimator, scope_note, write_table
from .results import ERROR, RESULTS, collect_results
from .runner import run_tasks
from .tasks import Task

__all__ = ["sweep_tasks", "run_sweep", "write_sweep_report", "receptive_fields"]


def sweep_tasks(
    base: Config,
    decoder: str,
    layers: Sequence[int],
    kernels: Sequence[int],
    priors: Sequence[str],
    fields: Sequence[str] = (),
) -> list[Task]:
    """The grid ``layers x kernels x priors`` on top of ``base``, validated; or,
    with ``fields``, the paper's receptive-field grid ``fields x priors`` of gated
    decoders named ``AxB`` (e.g. ``["4x2", "5x3", "7x4", "9x5"]`` for CIFAR-10,
    :meth:`vlae.pixelcnn.GatedPixelCNN.from_field`; ``layers`` and ``kernels`` unused).

    Raises:
        VLAEError: a grid value the decoder cannot take (layers < 1, an even or
            non-positive kernel, an unknown prior or decoder), naming the flag.
    """
    if fields:
        return _field_tasks(base, fields, priors)
    if decoder not in ("masked", "gated"):
        raise VLAEError(
            f"invalid --decoder: the sweep varies a PixelCNN's receptive field, so it must be "
            f"masked or gated, got {decoder!r}"
        )
    for n in layers:
        if n < 1:
            raise VLAEError(f"invalid --layers: every depth must be >= 1, got {n}")
    for k in kernels:
        if k < 1 or k % 2 == 0:
            raise VLAEError(f"invalid --kernels: every kernel size must be a positive odd number, got {k}")
    _check_priors_and_code(base, priors)
    tasks = []
    for prior in priors:
        for k in kernels:
            for n in layers:
                cfg = config_from_dict(base.to_dict())
                cfg.model.decoder, cfg.model.decoder_layers, cfg.model.decoder_kernel = decoder, n, k
                cfg.model.prior = prior
                cfg.validate()
                tasks.append(
                    Task(
                        f"{decoder}-L{n}-k{k}-{prior}",
                        cfg,
                        {"decoder": decoder, "layers": n, "kernel": k, "prior": prior},
                    )
                )
    return tasks


def _check_priors_and_code(base: Config, priors: Sequence[str]) -> None:
    """One-line errors for a grid whose priors are unknown or whose model has no latent code."""
    from ..config import PRIORS

    for p in priors:
        if p not in PRIORS:
            raise VLAEError(f"invalid --priors: unknown prior {p!r}; choose from {', '.join(PRIORS)}")
    if base.model.latent_dim == 0:
        raise VLAEError(
            "invalid --set model.latent_dim=0: the sweep measures the KL of a latent code; "
            "an unconditional PixelCNN has none"
        )


def _field_tasks(base: Config, fields: Sequence[str], priors: Sequence[str]) -> list[Task]:
    from ..pixelcnn import field_depths

    for f in fields:
        try:
            field_depths(f)
        except ValueError as error:
            raise VLAEError(f"invalid --fields: {error}") from None
    _check_priors_and_code(base, priors)
    tasks = []
    for prior in priors:
        for f in fields:
            cfg = config_from_dict(base.to_dict())
            cfg.model.decoder, cfg.model.decoder_field, cfg.model.prior = "gated", f, prior
            cfg.validate()
            tasks.append(Task(f"gated-{f}-{prior}", cfg, {"decoder": "gated", "field": f, "prior": prior}))
    return tasks


def _sort_key(r: dict[str, Any]) -> tuple:
    return (
        str(r.get("prior")),
        r.get("rf_size") or 0,
        str(r.get("decoder")),
        r.get("kernel") or 0,
        r.get("layers") or 0,
    )


def write_sweep_report(
    out_dir: str | os.PathLike, records: list[dict[str, Any]] | None = None, sweep_config: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write ``sweep.{csv,json,md}`` and the two plots for ``records``
    (default: every finished run under ``out_dir``)."""
    out = Path(out_dir)
    records = collect_results(out) if records is None else [r for r in records if r]
    if not records:
        raise VLAEError(f"no finished runs (*/{RESULTS}) under {out}")
    records = sorted(records, key=_sort_key)
    est = estimator(records)
    columns = [
        ("prior", "prior"),
        ("decoder", "decoder"),
        ("layers", "layers"),
        ("kernel", "kernel"),
        ("rf_name", "field AxB"),
        ("rf_size", "RF size (px)"),
        ("rf_up", "RF rows up"),
        ("rf_left", "RF cols left/right"),
        ("rf_coverage", "context seen"),
        ("kl", "KL (nats)"),
        ("nll", f"NLL ({est})"),
        ("nelbo", "-ELBO"),
        ("active_units", "active units"),
        ("steps", "steps"),
        ("seconds", "seconds"),
    ]
    note = (
        f"{scope_note(records)}. KL: single-sample estimate of "
        f"KL(q(z|x) || p(z)); NLL: negative {est}; -ELBO: single-sample negative ELBO (averaged over the k draws). "
        "'context seen': mean fraction of the preceding pixels inside the receptive field."
    )
    paths = write_table(
        records,
        out,
        "sweep",
        columns,
        {"sweep": sweep_config, "estimator": est},
        title="KL vs receptive field",
        note=note,
    )
    paths.update(_plots(records, out, est))
    return paths


def _plots(records: list[dict[str, Any]], out: Path, bound: str) -> dict[str, Path]:
    """``kl_vs_receptive_field.png`` and ``nll_vs_receptive_field.png``: one line per (decoder, prior)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((str(r.get("decoder")), str(r.get("prior"))), []).append(r)
    several_decoders = len({d for d, _ in groups}) > 1
    paths = {}
    for key, ylabel, fname in (
        ("kl", "KL(q(z|x) || p(z))  [nats per image]", "kl_vs_receptive_field.png"),
        ("nll", f"test NLL, {bound}  [nats per image]", "nll_vs_receptive_field.png"),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for (decoder, prior), rows in sorted(groups.items()):
            rows = sorted((r for r in rows if r.get(key) is not None), key=lambda r: r["rf_size"])
            if not rows:
                continue
            label = f"{prior} prior" + (f", {decoder}" if several_decoders else "")
            ax.plot(
                [r["rf_size"] for r in rows],
                [r[key] for r in rows],
                marker="o",
                linestyle="--" if prior == "gaussian" else "-",
                label=label,
            )
            for r in rows:  # depth, kernel and the share of the causal context the decoder sees
                coverage = f" {100 * r['rf_coverage']:.0f}%" if r.get("rf_coverage") is not None else ""
                name = r.get("rf_name") or f"L{r['layers']} k{r['kernel']}"
                ax.annotate(
                    f"{name}{coverage}",
                    (r["rf_size"], r[key]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, 3),
                    alpha=0.7,
                )
        ax.set_xscale("log")
        ax.set_xlabel("decoder receptive field  [pixels]  (labels: layers, kernel, % of the context seen)")
        ax.set_ylabel(ylabel)
        ax.set_title(
            "information in z vs the PixelCNN's receptive field"
            if key == "kl"
            else "likelihood vs the PixelCNN's receptive field",
            fontsize=10,
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths[fname] = out / fname
        fig.savefig(paths[fname], dpi=120)
        plt.close(fig)
    return paths


def run_sweep(
    out_dir: str | os.PathLike,
    base: Config,
    *,
    decoder: str = "masked",
    layers: Sequence[int] = (1, 2, 4, 8, 16),
    kernels: Sequence[int] = (3, 5),
    priors: Sequence[str] = ("gaussian", "af"),
    eval_subset: int = 1000,
    k: int = 16,
    eval_batch_size: int = 50,
    jobs: int = 0,
    threads: int = 1,
    data: Any = None,
    test_images: Any = None,
    log: Callable[[str], object] = print,
    sweep_config: dict[str, Any] | None = None,
    fields: Sequence[str] = (),
) -> tuple[list[dict | None], dict]:
    """Run (or finish) a sweep and write its tables and plots (``fields``: the
    ``AxB`` grid of :func:`sweep_tasks` instead of ``layers x kernels``).

    Returns:
        ``(records, status)`` as :func:`run_tasks`; ``status["outputs"]`` maps
        output names to paths.

    Raises:
        VLAEError: bad grid values; every run failed.
    """
    tasks = sweep_tasks(base, decoder, layers, kernels, priors, fields)
    out = Path(out_dir)
    config = {
        "decoder": "gated" if fields else decoder,
        "fields": list(fields),
        "layers": list(layers),
        "kernels": list(kernels),
        "priors": list(priors),
        "eval_subset": eval_subset,
        "k": k,
        "jobs": jobs,
        "threads": threads,
        **(sweep_config or {}),
        "runs": [t.name for t in tasks],
        "base_config": base.to_dict(),
    }
    records, status = run_tasks(
        tasks,
        out,
        eval_subset=eval_subset,
        k=k,
        eval_batch_size=eval_batch_size,
        jobs=jobs,
        threads=threads,
        data=data,
        test_images=test_images,
        log=log,
        settings=("sweep_config.json", config),
    )
    finished = [r for r in records if r]
    if not finished:
        raise VLAEError(f"every run of the sweep failed; see {out}/*/{ERROR}")
    # Tables show every finished run in the folder (earlier, wider grids included).
    status["outputs"] = write_sweep_report(out, None, config)
    return records, status


def receptive_fields(tasks: Sequence[Task]) -> list[dict[str, Any]]:
    """Each task's :func:`receptive_field_record`, from its decoder built alone
    (no training): what ``vlae sweep --list`` prints."""
    from ..pixelcnn import DECODERS, GatedPixelCNN

    records = []
    for t in tasks:
        m = t.config.model
        dec = (
            GatedPixelCNN.from_field(m.decoder_field, 8, m.cond_channels)
            if m.decoder_field
            else DECODERS[m.decoder](m.decoder_layers, m.decoder_kernel, cond_channels=m.cond_channels)
        )
        records.append(receptive_field_record(dec, m.image_shape))
    return records
