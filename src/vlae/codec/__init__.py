"""Bits-back lossless compression with a trained VLAE: the bound as a file size.

The paper's section 2 reads the negative ELBO as the length of a *bits-back*
code (Hinton and van Camp, 1993; Frey and Hinton, 1997). This package makes that
code real, with asymmetric numeral systems on a stack (BB-ANS, Townsend et al.,
2019) from the ``constriction`` package (:class:`constriction.stream.stack.AnsCoder`,
every model ``perfect=False``).

Bits-back, one image ``x`` at a time, on one stack of bits:

1. **pop** a latent ``z`` from the discretized posterior ``Q(z|x)``: decoding
   with ``Q`` *reads* about ``-log2 Q(z|x)`` bits off the stack (the bits of
   earlier images, or the initial bits);
2. **push** ``x`` under ``p(x|z)``, pixel by pixel: ``-log2 p(x|z)`` bits;
3. **push** ``z`` under the discretized prior ``P(z)``: ``-log2 P(z)`` bits.

The stack grows by ``-log2 p(x|z) - log2 P(z) + log2 Q(z|x)`` bits, whose
expectation over ``z ~ Q`` is the negative ELBO. Decoding runs the steps
backwards: pop ``z`` under ``P``, pop ``x`` under ``p(x|z)``, recompute
``Q(z|x)`` from the decoded ``x`` and push ``z`` back under it, which returns the
bits step 1 read, exactly. Images are coded in *chunks* (one network pass
serves a chunk; decoding visits the chunks in reverse order). The encoder, which
knows the pixels, reads the decoder's outputs from one teacher-forced pass; the
decoder walks it position by position with the fast sampler's cached engine, all
of the chunk's images in lockstep: the same numbers up to the order of the sums,
which the grid below absorbs (measured: 0.6% of its margin). A chunk pops all
its latents before it pushes anything, and each pop takes up to
``D * precision`` bits while an image leaves only its net cost (~130 bits for
an MNIST digit at 90 nats) on the stack, so the encoder sizes each chunk to the bits the stack
holds (at most ``batch``) and the file lists the sizes. (Popping from an
exhausted stack would still round-trip, but it reads zeros: a poor ``z``.)
The default ``batch`` (:func:`default_batch`) grows as the decoder shrinks: 500
images for ``tiny``, whose steps cost per-operation overhead, 100 for
``mnist-small`` and larger, whose steps cost arithmetic and whose caches grow
with the chunk.

**Initial bits.** The first pop needs bits to read: the stack starts with
``initial_words`` pseudo-random 32-bit words (seeded by the images' digest), a
fixed overhead of about ``D * (precision + 2)`` bits, stated separately and
amortized over the images. The decoder regenerates them and checks that
exactly they remain after the last image: a free integrity check.

**Latent discretization** (as BB-ANS). Every latent dimension is cut into
``K = 2**precision`` bins of equal mass under the prior's base distribution
``N(0, 1)`` (its CDF as :mod:`vlae.portable` computes it, to 1.2e-7); a bin is
represented by its median. Pushing a bin under the prior then costs exactly
``precision`` bits per dimension, and the posterior's mass in a bin is a
difference of two normal CDFs. ``precision`` (default 8) trades
discretization error (the bins near 0 are ``~1 / (0.4 K)`` wide, 0.01 at 8 bits,
below any posterior standard deviation that matters) against time: each popped or
pushed dimension evaluates the ``K`` bins (those within 9 standard deviations).
Measured on 500 binarized-MNIST test digits (mnist-small, 5 minutes of training):
+0.06% of the -ELBO at 8 bits, +0.01% at 12, with 8 bits 1.4x (compress) and
1.8x (decompress) faster; on 200 Fashion-MNIST images (fashion-small) +0.04% and
+0.07%.

**The AF prior: coding in the flow's noise coordinates.** With more than one
flow step in alternating orders, ``p(z)`` is not a product of univariate
conditionals in one order, so ``z`` cannot be pushed under it directly. The
code therefore lives in the prior's noise coordinates ``eps = f(z)``, where
``p(eps) = N(0, I)`` *factorizes*: the bins above are bins of ``eps``, the prior
push is the uniform ``precision`` bits per dimension, and the decoder is fed
``z = f^-1(eps_hat)`` (the flow's exact inverse of the bin medians). Since
``log p(z) - log q(z|x) = log N(eps) - log q_eps(eps|x)`` for any bijection
``f`` (the log-determinants cancel; mean-only steps have none), the ELBO is the
same in either coordinate system; only the posterior must be re-expressed:
``q_eps`` is ``q(z|x)`` pushed through ``f``, which is not factorized either.
We pop from its **Gaussian linearization** ``Q = N(f(g(0)), J J^T)``, where
``g(eta) = mu + sigma * eta`` (followed by the IAF steps for an IAF posterior) maps
the posterior's standard noise to ``z`` and ``J`` is the Jacobian of
``f(g(eta))`` at ``eta = 0``. ``Q`` is coded dimension by dimension through its
Cholesky factor (``J J^T = L L^T``): dimension ``i`` given the bins chosen
for ``j < i`` is ``N(m_i + sum_j L_ij eta_j, L_ii^2)``. Bits-back is exact for any
proposal both sides compute identically; a proposal other than the true
posterior only changes the *length*: the code costs the ELBO of ``Q``
instead of ``q``. For a Gaussian prior and a Gaussian posterior ``J = diag(sigma)``
and ``Q`` *is* the posterior (the textbook case). For the AF prior the price
is how far ``f`` bends across the posterior's width; ``bench/compress.py``
measures it. On all 10,000 binarized-MNIST test digits (mnist-small, 15 and
30 minutes of training on a shared CPU) the code came within +0.17% of the
-ELBO with the Gaussian prior and +0.29% with the AF prior (both within two
standard errors of the -ELBO estimate), and precisions 6 to 16 cost the same
to 0.1 nats. (Local bits-back coding, Ho et al. 2019, would track the Jacobian
per bin instead; the linearization costs one reverse-mode Jacobian per chunk
and no extra initial bits.)

**Pixels.** A binary pixel is one Bernoulli symbol. An 8-bit pixel is coded
channel by channel, R, then G, then B, each a 256-symbol categorical: the exact
conditionals of the PixelCNN++ mixture, ``p(R)`` from the mixture's R marginal
and ``p(G | R)``, ``p(B | R, G)`` from the mixture with each component's weight
re-weighted by its likelihood of the channels already coded (and its G and B
means shifted by them), the bins from the observation model's own CDF
differences (:meth:`~vlae.observation.DiscretizedLogisticMixture.channel_probs`),
so the three conditionals multiply to ``p(x|z)`` exactly. On 1,000 8x8 patches
of the embedded photographs, with a tiny spatial-latent model trained for 300
steps (about 100 s), the code took 777.39 nats per patch against a -ELBO of
777.37 with the AF prior, and 773.37 against 773.39 with the Gaussian prior.

**Exactness on every machine.** One wrong probability bit corrupts everything
decoded after it, so the encoder and the decoder must compute *the same numbers*,
also when the decoder runs on another machine: another thread count, AVX2
instead of AVX-512 or the plain ``default`` kernels (``ATEN_CPU_CAPABILITY``),
a GPU. Those agree only to the last bits (reduction orders, FMA, vector widths,
transcendental libraries), and a float32 model's probabilities differ there. The
method (:mod:`vlae.portable`):

1. The probability model runs in **float64** (a float64 copy of the weights, on
   ``device``): machines then disagree by a few ulps, ~1e-16 relative.
2. Every number the network hands the coder -- the decoder's outputs per pixel,
   the proposal's mean and Cholesky factor, the 8-bit conditionals of
   :meth:`~vlae.observation.DiscretizedLogisticMixture.channel_probs` -- is
   **snapped** to a coarse grid: 16 significant bits (steps of ``2**-16`` below
   1 for network outputs; relative for probabilities). Two machines snap a value
   differently only if it lies within their disagreement of a rounding boundary.
3. The encoder knows where that can happen: a value within ``2**-24`` grid steps
   of a boundary (``2**-40 max(1, |v|)``, thousands of float64 ulps) is a
   **near-tie**, and the file records which way it rounded (13 bytes each); the
   decoder rounds those the same way. Expected near-ties: ``2**-23`` per value,
   e.g. about two for all 10,000 binarized-MNIST test images with a 32-dimensional
   code (18 million snapped values), a few hundred for 10,000 8-bit Fashion-MNIST images.
4. After snapping, only IEEE-754 operations that are correctly rounded on every
   machine are used, in a fixed order: the Bernoulli's ``sigmoid``, the latent
   bins' normal CDF and its inverse (:mod:`vlae.portable`: a polynomial ``exp``
   and a 1.2e-7-accurate ``erfc``; the bins are equal-mass under that CDF), the
   conditional means of the proposal; constriction's quantization is integer
   and float arithmetic on these same inputs.

Hence decoding is exact on any machine whose float64 results differ from the
writer's by less than the margin, ``2**-40 max(1, |v|)`` = 9.1e-13 (relative
``2**-40`` for the 8-bit conditionals), with certainty: a value the machines
could round apart is a recorded near-tie, not a matter of chance. Measured
(fashion-small, 40 Fashion-MNIST images, float64, against AVX-512 with 1 thread):
with ``default`` kernels 81% of the decoder's outputs differ, by at most 3.4e-15
``max(1, |v|)``; AVX2's are identical. The 8-bit conditionals computed from
identical inputs differ by at most 2.3e-15 relative, and by 1.2e-15 on 5 million
probabilities of components as wide as the model allows (log-scales up to 7):
the margin is more than 250 times the disagreement. (Conditionals written as
differences of CDFs, format version 2, lost ``~255 s`` ulps to cancellation: 2.7e-11
relative for the wide components, 30 times the margin. Version 3 writes each bin
as a product of tails, see
:meth:`~vlae.observation.DiscretizedLogisticMixture.channel_probs`.)
The margin is an assumption on the hardware,
not a probability; violating it is *detected*: the file
carries a CRC-32 of everything snapped (per site, order-free), checked after
decoding, and since the file's own CRC-32 vouches for its bytes, any failure to
decode an intact file is reported as what it is ("this file was written on a
machine whose arithmetic differs ..."), never as corruption and never as wrong
images with exit status 0 (a wrong image passes both the snapped-value CRC and
the images' SHA-256 digest with probability below ``2**-32``). The cost: one
float64 network, and the near-ties (bytes) -- the grid itself changes a
probability by at most ``2**-17`` relative, a loss of ~1e-10 bits per symbol.
Tests compress and decompress in subprocesses under ``--threads`` 1 and 2,
``ATEN_CPU_CAPABILITY`` avx512/avx2/default and two chunk layouts (without the
grid those files fail to decode: the float64 numbers do differ); along PyTorch's own
convolution kernels, the code path a GPU takes; with ``device="cuda"`` on an emulated GPU
(``tests/emulated_cuda.py``: every tensor's device is checked as CUDA checks it, the
numbers are the CPU's), files crossing both ways; and CUDA against the CPU where a GPU
is present (the suite's CUDA tests; they have not yet run on a real GPU).

Files of format version 1 (float32 probabilities, decodable only on the machine
that wrote them) and version-2 files of 8-bit images (their conditionals computed
as differences of CDFs) are refused with a one-line message naming the version;
version-2 files of binary images code with the same numbers as version 3 and are read.

File format (all integers little-endian):

=========  =======  ==========================================================
bytes      type     field
=========  =======  ==========================================================
0-7        8 bytes  magic ``\\x89VLAEbb\\n``
8-9        u16      format version (:data:`FORMAT_VERSION`)
10-25      16 B     model identity: SHA-256 of its options and weights (:func:`model_identity`)
26         u8       observation model (0: Bernoulli, binary pixels; 1: logistic mixture, 8-bit)
27-32      3 x u16  image shape ``C, H, W``
33-36      u32      number of images
37-38      u16      largest chunk ``batch``
39         u8       latent precision (bits per dimension)
40-43      u32      initial words (32-bit)
44-59      16 B     SHA-256 of the images (bit-packed if binary; seeds the initial words)
60-63      u32      ``M``, number of chunks
64-67      u32      ``W``, number of 32-bit words in the stream
68-71      u32      ``T``, number of near-ties
72-75      u32      checksum of the snapped numbers (XOR over sites of CRC-32s)
76-...     M x u16  images per chunk, in encoding order
...        T x 13 B near-ties: chunk u32, site u32, index u32, kind | direction << 2 u8
...        W x u32  the ANS stack (``AnsCoder.get_compressed()``)
last 4     u32      CRC-32 of everything before it
=========  =======  ==========================================================

The package, one concept per module (each imports only those listed after it):
:mod:`~vlae.codec.api` (:func:`compress`, :func:`decompress`), :mod:`~vlae.codec.files`
(``.npy`` and PNG input and output), :mod:`~vlae.codec.coder` (a chunk on the ANS
stack, :class:`CodeStats`), :mod:`~vlae.codec.latents` (the latent bins and the
proposal), :mod:`~vlae.codec.pixels` (the decoder's walk and the channel
conditionals), :mod:`~vlae.codec.grid` (snapping, near-ties), :mod:`~vlae.codec.models`
(the models supported, the float64 copy) and :mod:`~vlae.codec.format` (the layout
above).

Example:
    >>> import torch
    >>> from vlae.config import get_preset
    >>> from vlae.model import VLAE
    >>> model = VLAE(get_preset("tiny").model).eval()
    >>> x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.2))
    >>> data = compress(model, x)
    >>> torch.equal(decompress(model, data), x.to(torch.uint8))
    True

References:
    Townsend, Bird and Barber, Practical Lossless Compression with Latent
    Variables using Bits Back Coding (ICLR 2019).
    Ho, Lohn and Abbeel, Compression with Flows via Local Bits-Back Coding (2019).
    Chen et al., Variational Lossy Autoencoder (ICLR 2017), section 2.
"""

from __future__ import annotations

from .api import BATCH_RANGE, CHUNK_CACHE_BYTES, DEFAULT_PRECISION, compress, decompress, default_batch
from .coder import CodeStats
from .files import read_images, write_images
from .format import FORMAT_VERSION, MAGIC, Header, model_identity, read_header

__all__ = [
    "compress",
    "decompress",
    "read_header",
    "Header",
    "CodeStats",
    "model_identity",
    "MAGIC",
    "FORMAT_VERSION",
    "DEFAULT_PRECISION",
    "BATCH_RANGE",
    "CHUNK_CACHE_BYTES",
    "default_batch",
    "read_images",
    "write_images",
]
