"""The ablation (``vlae ablation``): which part of VLAE buys what (the paper's appendix D, extended).

Five models trained with the same budget, seed and data, and evaluated on the
same test images, in one table of NLL (IW bound, ``k`` named), ELBO and KL:

1. ``pixelcnn``   -- unconditional PixelCNN (``latent_dim = 0``): no ``z``, so
   its KL is zero and every bound is its exact likelihood;
2. ``gaussian``   -- PixelCNN decoder + Gaussian prior (a VAE with a local
   autoregressive decoder);
3. ``af``         -- PixelCNN decoder + AF prior: the VLAE;
4. ``iaf``        -- PixelCNN decoder + IAF posterior + Gaussian prior. The IAF
   gets the AF prior's flow (same steps and MADE widths), so 3 vs 4 is the
   paper's "AF prior versus IAF posterior" comparison at equal size;
5. ``factorized`` -- factorized Bernoulli decoder + AF prior: no autoregression
   in the decoder, so ``z`` must carry everything (a plain VAE decoder).

The PixelCNN variants use the base preset's decoder (masked or gated) and its
receptive field. Runs go through :func:`vlae.experiments.runner.run_tasks`: in
parallel, each in its own process, skipped when finished, resumed when interrupted.

Example::

    vlae ablation --out runs/ablation --preset mnist-small --budget 600 --jobs 2
    vlae ablation --report runs/ablation

From Python:
    >>> from vlae.config import get_preset
    >>> [t.name for t in ablation_tasks(get_preset("tiny"))]
    ['pixelcnn', 'gaussian', 'af', 'iaf', 'factorized']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import Config, config_from_dict
from ..errors import VLAEError
from .report import estimator, scope_note, write_table
from .results import collect_results
from .runner import run_tasks
from .tasks import Task

__all__ = ["VARIANTS", "PAPER", "ablation_tasks", "run_ablation", "write_ablation_report"]

#: name -> (description, model fields set on top of the base preset)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "pixelcnn": ("unconditional PixelCNN", {"latent_dim": 0}),
    "gaussian": ("PixelCNN decoder + Gaussian prior", {"prior": "gaussian", "posterior": "gaussian"}),
    "af": ("PixelCNN decoder + AF prior (VLAE)", {"prior": "af", "posterior": "gaussian"}),
    "iaf": ("PixelCNN decoder + IAF posterior + Gaussian prior", {"prior": "gaussian", "posterior": "iaf"}),
    "factorized": (
        "factorized Bernoulli decoder + AF prior",
        {"decoder": "factorized", "prior": "af", "posterior": "gaussian"},
    ),
}


#: The paper's own ablation (appendix D: dynamically binarized MNIST, its full protocol), test NLL
#: and KL in nats of the three variants it compares: shown beside ours for context, the same
#: experiment only when the data and the training match.
PAPER: dict[str, tuple[float, float]] = {"pixelcnn": (87.55, 0.0), "gaussian": (79.48, 10.60), "af": (78.94, 11.73)}


def ablation_tasks(base: Config, variants: Sequence[str] | None = None) -> list[Task]:
    """One task per variant (default: all five, in the table's order).

    Raises:
        VLAEError: an unknown variant name, or a base configuration without a
            latent code.
    """
    variants = list(VARIANTS) if variants is None else list(variants)
    for name in variants:
        if name not in VARIANTS:
            raise VLAEError(f"invalid --variants: unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    if base.model.latent_dim == 0:
        raise VLAEError(
            "invalid --set model.latent_dim=0: the ablation compares latent-variable models; "
            "the unconditional PixelCNN is already one of its variants"
        )
    pixelcnn = base.model.decoder if base.model.decoder in ("masked", "gated") else "masked"
    tasks = []
    for name in variants:
        description, fields = VARIANTS[name]
        cfg = config_from_dict(base.to_dict())
        cfg.model.decoder = pixelcnn
        for key, value in fields.items():
            setattr(cfg.model, key, value)
        if cfg.model.posterior == "iaf":
            # The AF prior's flow, moved to the posterior: the same network on the other side.
            cfg.model.iaf_steps, cfg.model.iaf_hidden = cfg.model.flow_steps, tuple(cfg.model.made_hidden)
        try:
            cfg.validate()
        except VLAEError as error:
            raise VLAEError(f"variant {name}: {error}") from None
        tasks.append(Task(name, cfg, {"variant": name, "description": description}))
    return tasks


def _beside_the_paper(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with the paper's NLL and KL for its variant (``None`` where it has none)."""
    nll, kl = PAPER.get(record["variant"], (None, None))
    return {**record, "paper_nll": nll, "paper_kl": kl}


def write_ablation_report(
    out_dir: str | Path, records: list[dict[str, Any]] | None = None, ablation_config: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write ``ablation.{csv,json,md}`` for ``records`` (default: every finished
    run under ``out_dir``), in the order of :data:`VARIANTS`."""
    out = Path(out_dir)
    records = collect_results(out) if records is None else [r for r in records if r]
    records = [r for r in records if r.get("variant") in VARIANTS]
    if not records:
        raise VLAEError(f"no finished ablation runs (*/results.json) under {out}")
    order = list(VARIANTS)
    records.sort(key=lambda r: order.index(r["variant"]))
    records = [_beside_the_paper(r) for r in records]
    est = estimator(records)
    columns = [
        ("variant", "variant"),
        ("description", "model"),
        ("decoder", "decoder"),
        ("prior", "prior"),
        ("posterior", "posterior"),
        ("rf_size", "RF size (px)"),
        ("nll", f"NLL ({est})"),
        ("nelbo", "-ELBO"),
        ("kl", "KL (nats)"),
        ("active_units", "active units"),
        ("paper_nll", "paper: NLL"),
        ("paper_kl", "paper: KL"),
        ("steps", "steps"),
        ("seconds", "seconds"),
    ]
    note = (
        f"{scope_note(records)}, equal training budget, seed and data. "
        f"NLL: negative {est}; KL: single-sample estimate of KL(q(z|x) || p(z)). "
        "The unconditional PixelCNN has no z: its KL is 0 and its bounds are its exact likelihood. "
        "paper: Chen et al. (2017), appendix D, on dynamically binarized MNIST after its full training "
        "(`vlae reproduce dynamic-mnist`'s protocol), for context: the same experiment only when the "
        "data and the training match."
    )
    return write_table(
        records,
        out,
        "ablation",
        columns,
        {"ablation": ablation_config, "estimator": est},
        title="Ablation: prior, posterior and decoder at equal budget",
        note=note,
    )


def run_ablation(
    out_dir: str | Path,
    base: Config,
    *,
    variants: Sequence[str] | None = None,
    eval_subset: int = 1000,
    k: int = 64,
    eval_batch_size: int = 50,
    jobs: int = 0,
    threads: int = 1,
    data: Any = None,
    test_images: Any = None,
    log: Callable[[str], object] = print,
    ablation_config: dict[str, Any] | None = None,
) -> tuple[list[dict | None], dict]:
    """Run (or finish) the ablation and write its table.

    Returns:
        ``(records, status)`` as :func:`vlae.experiments.runner.run_tasks`, with
        ``status["outputs"]`` the written files.
    """
    tasks = ablation_tasks(base, variants)
    out = Path(out_dir)
    config = {
        "variants": [t.name for t in tasks],
        "eval_subset": eval_subset,
        "k": k,
        "jobs": jobs,
        "threads": threads,
        **(ablation_config or {}),
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
        settings=("ablation_config.json", config),
    )
    if not any(records):
        raise VLAEError(f"every ablation run failed; see {out}/*/error.txt")
    status["outputs"] = write_ablation_report(out, None, config)
    return records, status
