"""Evaluation: the importance-weighted bound, the ELBO, KL and active units.

The paper's headline number is the test NLL estimated with the IW bound
(Burda et al., 2016) with ``k = 4096`` samples per image:

    -log p(x)  <=  -log (1/k) sum_j  p(x|z_j) p(z_j) / q(z_j|x)

averaged over test images, in nats per image (also in bits per dimension),
with its standard error over images. The ELBO is the average of the same
``k`` log weights (a ``k``-sample estimate of one-sample ELBO), so it costs
nothing extra; so are ``recon`` and ``kl``.

Every image draws its ``k`` samples from its own stream, a generator seeded
by :func:`image_seed` ``(seed, index)``, and the images form fixed blocks
(``batch_size``): the numbers do not depend on how the blocks are spread over
shards, processes or restarts, so a sharded evaluation merged
(:func:`summarize` of all per-image records) equals the unsharded one exactly.
What the ``k`` samples share -- the encoder pass and the decoder's first-layer
convolution of the image -- is computed once per image
(:meth:`vlae.model.VLAE.sample_terms`).

The package, one concept per module, in the order a reader meets it:

- :mod:`~vlae.evaluate.checkpoint_eval`: :func:`evaluate_checkpoint`, what
  ``vlae eval`` runs, in named steps from a checkpoint to a result file;
- :mod:`~vlae.evaluate.bound`: the IW bound of a model on images
  (:func:`evaluate_model`, :func:`evaluate_block`, :func:`image_seed`);
- :mod:`~vlae.evaluate.statistics`: from per-image records to the reported
  numbers (:func:`summarize`, :func:`standard_error`, :func:`active_units`);
- :mod:`~vlae.evaluate.shards`: fixed blocks, shards of them, and the files
  that let an evaluation resume and merge (:func:`blocks_of`,
  :func:`parse_shard`, :func:`shard_blocks`);
- :mod:`~vlae.evaluate.result_file`: the result's name (:func:`result_name`)
  and which result it may replace.

Example (a model in memory: :mod:`~vlae.evaluate.bound`'s example):
    >>> result = evaluate_checkpoint("runs/tiny", k=64, subset=1000)  # doctest: +SKIP
    >>> result["estimator"]  # doctest: +SKIP
    'IW bound, k=64'
"""

from .bound import evaluate_block, evaluate_model, image_seed
from .checkpoint_eval import evaluate_checkpoint
from .result_file import result_name
from .shards import blocks_of, parse_shard, shard_blocks
from .statistics import ACTIVE_THRESHOLD, active_units, standard_error, summarize

__all__ = [
    "evaluate_model",
    "evaluate_block",
    "evaluate_checkpoint",
    "summarize",
    "image_seed",
    "parse_shard",
    "shard_blocks",
    "blocks_of",
    "result_name",
    "active_units",
    "standard_error",
    "ACTIVE_THRESHOLD",
]
