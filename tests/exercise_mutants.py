"""Planted bugs for the exercise checkers (used by ``tests/test_exercises.py``).

Each :class:`Mutant` is a text substitution on a reference solution in
``exercises/solutions/``: the typical mistake a learner makes, written the way a
learner would write it. A checker is only useful if it catches every one of
them, and with the right diagnosis, before any training run: so each mutant
names the check that must fail *first* (the one a learner fixes first) and a
phrase of that check's message or hint, which must name the mistake.

At least ten per exercise, covering every TODO and the classes of mistakes of
issue 13: architecture not as specified (exercise 2), training-loop and
measurement mistakes (exercise 3), an inverse one pass short (exercise 4), a KL
without the flow's log-determinant, a decoder that sees too much and wrongly
scaled inputs (exercise 5).

``old`` must occur exactly ``count`` times in the solution, so a mutant can
never silently be the unmodified solution.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Mutant", "MUTANTS", "mutate"]


@dataclass(frozen=True)
class Mutant:
    exercise: str  # file name in exercises/ and exercises/solutions/
    name: str
    old: str
    new: str
    fails: str  # a substring of the name of the first check that must FAIL
    says: str  # a substring of that check's message or hint (the diagnosis)
    count: int = 1
    more: tuple[tuple[str, str], ...] = ()  # further substitutions, each of text occurring once

    @property
    def id(self) -> str:
        return f"{self.exercise[:11]}-{self.name}"


def mutate(source: str, mutant: Mutant) -> str:
    """``source`` with the planted bug; raises if ``old`` does not occur exactly ``count`` times."""
    mutated = source
    for old, new, count in [(mutant.old, mutant.new, mutant.count)] + [(o, n, 1) for o, n in mutant.more]:
        found = mutated.count(old)
        if found != count:
            raise AssertionError(f"mutant {mutant.id}: {old!r} occurs {found} times in the solution, "
                                 f"expected {count}")
        mutated = mutated.replace(old, new)
    assert mutated != source, f"mutant {mutant.id} does not change the solution"
    return mutated


E1 = "exercise_01_masked_conv.py"
E2 = "exercise_02_pixelcnn_prior.py"
E3 = "exercise_03_posterior_collapse.py"
E4 = "exercise_04_flow_prior.py"
E5 = "exercise_05_vlae_complete.py"

MUTANTS: list[Mutant] = [
    # ------------------------------------------------------------------ exercise 1: masked convolutions
    Mutant(E1, "types-swapped", 'if mask_type == "B":\n        mask[cy, cx] = 1.0',
           'if mask_type == "A":\n        mask[cy, cx] = 1.0',
           "type-A masks", "are the types swapped?"),
    Mutant(E1, "future-row-visible", "mask[:cy, :] = 1.0", "mask[:cy + 2, :] = 1.0",
           "type-A masks", "rows below the centre are future pixels"),
    Mutant(E1, "centre-row-right-visible", "mask[cy, :cx] = 1.0", "mask[cy, :] = 1.0",
           "type-A masks", "right of the centre, in the centre row"),
    Mutant(E1, "rows-above-half-hidden", "mask[:cy, :] = 1.0", "mask[:cy, : cx + 1] = 1.0",
           "type-A masks", "including the columns right of the centre"),
    Mutant(E1, "centre-column-from-height", "mask[cy, :cx] = 1.0", "mask[cy, :cy] = 1.0",
           "non-square kernels", "left of the centre in the centre row come earlier"),
    Mutant(E1, "centre-from-height", "cy, cx = kh // 2, kw // 2", "cy, cx = kh // 2, kh // 2",
           "returns a (kh, kw)", "column kw // 2"),
    Mutant(E1, "shape-transposed", "mask = torch.zeros(kh, kw)", "mask = torch.zeros(kw, kh)",
           "returns a (kh, kw)", "rows first"),
    Mutant(E1, "no-validation", "    if kh < 1 or kw < 1 or kh % 2 == 0 or kw % 2 == 0:\n"
           '        raise ValueError(f"masked convolutions need odd kernel sides, got {(kh, kw)}")\n', "",
           "rejects even sides", "raise ValueError"),
    Mutant(E1, "unknown-type-accepted", '    if mask_type not in ("A", "B"):\n'
           '        raise ValueError(f"mask_type must be \'A\' or \'B\', got {mask_type!r}")\n', "",
           "rejects even sides", "must be 'A' or 'B'"),
    Mutant(E1, "mask-plain-attribute", 'self.register_buffer("mask", make_mask((kh, kw), mask_type))',
           "self.mask = make_mask((kh, kw), mask_type)",
           "buffer named 'mask'", "register_buffer"),
    Mutant(E1, "mask-as-parameter", 'self.register_buffer("mask", make_mask((kh, kw), mask_type))',
           "self.mask = nn.Parameter(make_mask((kh, kw), mask_type))",
           "buffer named 'mask'", "trained by the optimiser"),
    Mutant(E1, "mask-bool-buffer", 'self.register_buffer("mask", make_mask((kh, kw), mask_type))',
           'self.register_buffer("mask", make_mask((kh, kw), mask_type).bool())',
           "buffer named 'mask'", "dtype torch.bool"),
    Mutant(E1, "buffer-always-type-A", 'self.register_buffer("mask", make_mask((kh, kw), mask_type))',
           'self.register_buffer("mask", make_mask((kh, kw), "A"))',
           "buffer named 'mask'", "holds the type-A mask"),
    Mutant(E1, "mask-ignored", "F.conv2d(x, self.weight * self.mask,", "F.conv2d(x, self.weight,",
           "convolution of x with weight * mask", "forward ignores the mask"),
    Mutant(E1, "no-padding", "self.bias, self.stride, self.padding)", "self.bias, self.stride)",
           "convolution of x with weight * mask", "self.padding"),
    Mutant(E1, "bias-dropped", "self.weight * self.mask, self.bias,", "self.weight * self.mask, None,",
           "convolution of x with weight * mask", "lacks the bias"),
    Mutant(E1, "weight-overwritten", "        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, "
           "self.padding)", "        self.weight.data.mul_(self.mask)\n        return F.conv2d(x, self.weight, "
           "self.bias, self.stride, self.padding)",
           "leaves the weight untouched", "do not write into the weight"),
    Mutant(E1, "mask-at-init-only", 'self.register_buffer("mask", make_mask((kh, kw), mask_type))',
           'self.register_buffer("mask", make_mask((kh, kw), mask_type))\n'
           "        with torch.no_grad():\n            self.weight.mul_(self.mask)\n"
           "        self.forward = lambda x: F.conv2d(x, self.weight, self.bias, self.stride, self.padding)",
           "mask still holds after the weight changes", "the mask was applied once (in __init__)"),

    # ------------------------------------------------------------------ exercise 2: PixelCNN
    Mutant(E2, "first-layer-type-B", 'MaskedConv2d(1, channels, first_kernel, "A")',
           'MaskedConv2d(1, channels, first_kernel, "B")',
           "architecture", "the first layer must not see the pixel it predicts"),
    Mutant(E2, "first-kernel-ignored", 'MaskedConv2d(1, channels, first_kernel, "A")',
           'MaskedConv2d(1, channels, kernel, "A")',
           "architecture", "the first layer uses first_kernel"),
    Mutant(E2, "hidden-kernel-wrong", 'MaskedConv2d(channels, channels, kernel, "B")',
           'MaskedConv2d(channels, channels, first_kernel, "B")',
           "architecture", "hidden layer 1 uses kernel"),
    Mutant(E2, "unmasked-hidden-layers", 'MaskedConv2d(channels, channels, kernel, "B")',
           "nn.Conv2d(channels, channels, kernel, padding=kernel // 2)",
           "architecture", "must be a MaskedConv2d"),
    Mutant(E2, "one-hidden-layer-too-few", "for _ in range(hidden_layers))", "for _ in range(hidden_layers - 1))",
           "architecture", "2 type-B layers were applied: make exactly `hidden_layers` of them"),
    Mutant(E2, "hidden-layers-shared", 'nn.ModuleList(MaskedConv2d(channels, channels, kernel, "B") for _ in '
           "range(hidden_layers))", 'nn.ModuleList([MaskedConv2d(channels, channels, kernel, "B")] * hidden_layers)',
           "architecture", "the layers share their weights"),
    Mutant(E2, "3x3-output-layer", "self.out = nn.Conv2d(channels, 1, 1)",
           "self.out = nn.Conv2d(channels, 1, 3, padding=1)",
           "architecture", "the output layer must be a 1x1 convolution"),
    Mutant(E2, "linear-network", "h = F.relu(self.first(2 * x - 1))", "h = self.first(2 * x - 1)",
           "architecture", "no non-linearity between them",
           more=(("h = F.relu(conv(h))", "h = conv(h)"),)),
    Mutant(E2, "no-relu-in-hidden-layers", "h = F.relu(conv(h))", "h = conv(h)",
           "architecture", "no non-linearity between them"),
    Mutant(E2, "relu-on-logits", "        return self.out(h)", "        return F.relu(self.out(h))",
           "architecture", "the logits are not the output of the 1x1 layer"),
    Mutant(E2, "input-ignored", "h = F.relu(self.first(2 * x - 1))", "h = F.relu(self.first(0 * x - 1))",
           "read the earlier pixels", "feed x through all the layers"),
    Mutant(E2, "nll-sign", "    return nll.flatten(1).sum(1)", "    return -nll.flatten(1).sum(1)",
           "worked case", "this is the log-likelihood"),
    Mutant(E2, "nll-mean-over-pixels", "    return nll.flatten(1).sum(1)", "    return nll.flatten(1).mean(1)",
           "worked case", "sum over the pixels"),
    Mutant(E2, "nll-zero-one-swapped", "(logits, x.to(logits.dtype),", "(logits, (1 - x).to(logits.dtype),",
           "worked case", "0 and 1 swapped"),
    Mutant(E2, "nll-batch-sum", "    return nll.flatten(1).sum(1)", "    return nll.sum()",
           "one value per image", "returned a scalar"),
    Mutant(E2, "nll-double-sigmoid", "F.binary_cross_entropy_with_logits(logits,",
           "F.binary_cross_entropy_with_logits(torch.sigmoid(logits),",
           "worked case", "do not apply sigmoid"),
    Mutant(E2, "nll-log-of-sigmoid", 'nll = F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), '
           'reduction="none")', "p = torch.sigmoid(logits)\n    nll = -(x * torch.log(p) + (1 - x) * "
           "torch.log(1 - p))",
           "exact for large logits", "underflows"),

    # ------------------------------------------------------------------ exercise 3: posterior collapse
    Mutant(E3, "up-off-by-one", '"up": layers * reach,', '"up": layers * reach + 1,',
           "receptive_field_extent", "up = layers * (kernel_size // 2)"),
    Mutant(E3, "right-misses-first-layer", '"right": layers * reach,', '"right": (layers - 1) * reach,',
           "receptive_field_extent", "type-A layer already reaches"),
    Mutant(E3, "down-nonzero", '"down": 0,', '"down": reach,',
           "receptive_field_extent", "down is always 0"),
    Mutant(E3, "left-uses-kernel", '"left": layers * reach,', '"left": layers * kernel_size,',
           "receptive_field_extent", "columns to the left"),
    Mutant(E3, "rows-rounded-down", "return math.ceil(rows / reach)", "return rows // reach",
           "layers_to_see_rows", "round up"),
    Mutant(E3, "free-bits-left-on", "cfg.free_bits = 0.0", "cfg.free_bits = 0.01",
           "vae_config", "hide the collapse"),
    Mutant(E3, "af-prior", 'cfg.prior = "gaussian"', 'cfg.prior = "af"',
           "vae_config", "isolates the decoder"),
    Mutant(E3, "config-ignores-depth", "cfg.decoder_layers, cfg.decoder_kernel = decoder_layers, decoder_kernel",
           "cfg.decoder_kernel = decoder_kernel",
           "vae_config", "set both from the arguments"),
    Mutant(E3, "no-optimizer-step", "        optimizer.step()", "        pass",
           "train_vae changes the parameters", "optimizer.step()"),
    Mutant(E3, "zero-grad-after-backward", "        optimizer.zero_grad()\n        loss.backward()\n",
           "        loss.backward()\n        optimizer.zero_grad()\n",
           "train_vae changes the parameters", "zero_grad between backward and step erases the gradient"),
    Mutant(E3, "steps-off-by-one", "    for _ in range(steps):", "    for _ in range(steps - 1):",
           "`steps` steps", "expected 3 (one per step)"),
    Mutant(E3, "batch-size-ignored", "(batch_size,), generator=batches)", "(32,), generator=batches)",
           "`steps` steps", "expected (batch_size, 1, 28, 28)"),
    Mutant(E3, "same-batch-every-step", "generator=batches)]", "generator=torch.Generator().manual_seed(seed))]",
           "`steps` steps", "every step trained on the same batch"),
    Mutant(E3, "seed-ignored", "batches = torch.Generator().manual_seed(seed)",
           "batches = torch.Generator().manual_seed(0)",
           "`steps` steps", "the seed is ignored"),
    Mutant(E3, "unseeded-indices", "(batch_size,), generator=batches)", "(batch_size,))",
           "`steps` steps", "the seed is ignored"),
    Mutant(E3, "no-zero-grad", "        optimizer.zero_grad()\n", "",
           "Adam at the given learning rate", "the gradients accumulate over the steps"),
    Mutant(E3, "lr-not-passed", "torch.optim.Adam(model.parameters(), lr=lr)", "torch.optim.Adam(model.parameters())",
           "Adam at the given learning rate", "Adam's default"),
    Mutant(E3, "lr-hard-coded", "torch.optim.Adam(model.parameters(), lr=lr)",
           "torch.optim.Adam(model.parameters(), lr=2e-3)",
           "Adam at the given learning rate", "train_vae's default"),
    Mutant(E3, "optimizer-in-loop", "        loss, _ = model.loss(x)\n",
           "        optimizer = torch.optim.Adam(model.parameters(), lr=lr)\n        loss, _ = model.loss(x)\n",
           "Adam at the given learning rate", "a new optimiser is created every step"),
    Mutant(E3, "final-kl-is-nelbo", "model.terms(images[i:i + batch_size]).kl",
           "model.terms(images[i:i + batch_size]).nelbo",
           "final_kl", "negative ELBO"),
    Mutant(E3, "final-kl-returns-zero", "    return torch.cat(kl).mean().item()", "    return 0.0",
           "final_kl", "final_kl = 0.0000"),
    Mutant(E3, "final-kl-summed", "    return torch.cat(kl).mean().item()", "    return torch.cat(kl).sum().item()",
           "final_kl", "the sum over the images"),
    Mutant(E3, "final-kl-per-dimension-mean", "model.terms(images[i:i + batch_size]).kl",
           "model.terms(images[i:i + batch_size]).kl_per_dim.mean(1)",
           "final_kl", "a per-dimension mean"),
    Mutant(E3, "final-kl-mean-of-batch-means", "    return torch.cat(kl).mean().item()",
           "    return torch.stack([k.mean() for k in kl]).mean().item()",
           "final_kl", "the mean of the batch means"),
    Mutant(E3, "final-kl-first-batch-only", "for i in range(0, len(images), batch_size)]",
           "for i in range(0, batch_size, batch_size)]",
           "final_kl", "expected each of the 250 images once"),
    Mutant(E3, "kl-after-training-ignores-depth", "model = VLAE(vae_config(decoder_layers, decoder_kernel))",
           "model = VLAE(vae_config(1, decoder_kernel))",
           "kl_after_training", "pass decoder_layers and decoder_kernel on"),
    Mutant(E3, "kl-after-training-untrained", "    train_vae(model, train_images, steps, seed=seed)\n", "",
           "kl_after_training", "called train_vae 0 times"),
    Mutant(E3, "kl-after-training-seed-dropped", "train_vae(model, train_images, steps, seed=seed)",
           "train_vae(model, train_images, steps)",
           "kl_after_training", "pass the seed on"),
    Mutant(E3, "kl-on-training-images", "    return final_kl(model, test_images)",
           "    return final_kl(model, train_images)",
           "kl_after_training", "the KL is measured on the training images"),

    # ------------------------------------------------------------------ exercise 4: MADE and the AF prior
    Mutant(E4, "degrees-from-order-values",
           "inputs[torch.as_tensor(list(order), dtype=torch.long)] = torch.arange(1, features + 1)",
           "inputs[:] = torch.as_tensor(list(order), dtype=torch.long) + 1",
           "input degrees are 1 + the position", "degree order[i] + 1"),
    Mutant(E4, "hidden-degrees-from-zero", "torch.arange(width) % cycle + 1", "torch.arange(width) % cycle",
           "hidden degrees lie in 1..D-1", "reads nothing"),
    Mutant(E4, "hidden-degrees-up-to-D", "cycle = max(1, features - 1)", "cycle = features",
           "hidden degrees lie in 1..D-1", "is useless"),
    Mutant(E4, "hidden-mask-strict", "(d_out[:, None] >= d_in[None, :])", "(d_out[:, None] > d_in[None, :])",
           "hidden layers read units", "uses a strict >"),
    Mutant(E4, "hidden-mask-transposed", "(d_out[:, None] >= d_in[None, :])", "(d_in[:, None] <= d_out[None, :])",
           "hidden layers read units", "(out_features, in_features)"),
    Mutant(E4, "output-mask-geq", "(degrees[0][:, None] > degrees[-1][None, :])",
           "(degrees[0][:, None] >= degrees[-1][None, :])",
           "output layer reads only strictly lower", "needs a strict >"),
    Mutant(E4, "forward-wrong-direction", "return x * log_scale.exp() + shift, log_scale.sum(-1)",
           "return (x - shift) * torch.exp(-log_scale), log_scale.sum(-1)",
           "forward computes", "that is the other direction"),
    Mutant(E4, "logdet-sign", "return x * log_scale.exp() + shift, log_scale.sum(-1)",
           "return x * log_scale.exp() + shift, -log_scale.sum(-1)",
           "log-det equals", "wrong sign"),
    Mutant(E4, "logdet-per-dimension", "return x * log_scale.exp() + shift, log_scale.sum(-1)",
           "return x * log_scale.exp() + shift, log_scale",
           "log-det equals", "sum over the dimensions"),
    Mutant(E4, "inverse-one-pass", "        for _ in range(self.features):\n            log_scale, shift = "
           "self.params(x)", "        for _ in range(1):\n            log_scale, shift = self.params(x)",
           "inverse(forward(x)) = x", "that is what 1 pass(es) give"),
    Mutant(E4, "inverse-one-pass-short", "        for _ in range(self.features):\n",
           "        for _ in range(self.features - 1):\n",
           "inverse(forward(x)) = x", "that is what 4 pass(es) give"),
    Mutant(E4, "inverse-scale-not-undone", "x = (y - shift) * torch.exp(-log_scale)",
           "x = (y - shift) * torch.exp(log_scale)",
           "inverse(forward(x)) = x", "undo the scale with exp(-s)"),
    Mutant(E4, "first-step-reversed", "orders = [forward if k % 2 == 0 else forward[::-1] for k in range(steps)]",
           "orders = [forward[::-1] if k % 2 == 0 else forward for k in range(steps)]",
           "reversed between consecutive steps", "step 0 uses the order 0, 1, ..., D-1"),
    Mutant(E4, "order-not-reversed", "orders = [forward if k % 2 == 0 else forward[::-1] for k in range(steps)]",
           "orders = [forward for k in range(steps)]",
           "reversed between consecutive steps", "Reverse the order between steps"),
    Mutant(E4, "to-noise-keeps-last-logdet", "logdet = logdet + step_logdet", "logdet = step_logdet",
           "to_noise composes", "differs from the sum of the steps' log-dets"),
    Mutant(E4, "log-prob-without-logdet", "return (-0.5 * (eps.pow(2) + math.log(2 * math.pi))).sum(-1) + logdet",
           "return (-0.5 * (eps.pow(2) + math.log(2 * math.pi))).sum(-1)",
           "change-of-variables formula", "the log-det is missing"),
    Mutant(E4, "log-prob-logdet-subtracted", ".sum(-1) + logdet", ".sum(-1) - logdet",
           "change-of-variables formula", "the log-det is subtracted"),
    Mutant(E4, "log-prob-without-constant", "(-0.5 * (eps.pow(2) + math.log(2 * math.pi))).sum(-1)",
           "(-0.5 * eps.pow(2)).sum(-1)",
           "change-of-variables formula", "normalising constant"),
    Mutant(E4, "sample-steps-in-forward-order", "for step in reversed(self.steps):", "for step in self.steps:",
           "sample inverts to_noise", "for step in reversed(self.steps)"),
    Mutant(E4, "sample-applies-forward", "            z = step.inverse(z)", "            z, _ = step(z)",
           "sample inverts to_noise", "it needs their inverses"),
    Mutant(E4, "sample-returns-eps", "        for step in reversed(self.steps):\n            z = step.inverse(z)\n",
           "", "sample inverts to_noise", "sample returned eps itself"),

    # ------------------------------------------------------------------ exercise 5: the complete VLAE
    Mutant(E5, "encoder-unscaled", "self.encoder(2 * x - 1)", "self.encoder(x)",
           "reparameterised", "the encoder was given the 0/1 images"),
    Mutant(E5, "sigma-is-log-sigma", "z = mu + log_sigma.exp() * eps", "z = mu + log_sigma * eps",
           "reparameterised", "sigma = log_sigma.exp()"),
    Mutant(E5, "sigma-from-log-variance", "z = mu + log_sigma.exp() * eps", "z = mu + (0.5 * log_sigma).exp() * eps",
           "reparameterised", "not log variance"),
    Mutant(E5, "eps-argument-ignored", "        if eps is None:\n            eps = torch.randn_like(mu)\n",
           "        eps = torch.randn_like(mu)\n",
           "reparameterised", "with the eps given"),
    Mutant(E5, "z-detached", "z = mu + log_sigma.exp() * eps", "z = (mu + log_sigma.exp() * eps).detach()",
           "reparameterised", "no gradient reaches the encoder"),
    Mutant(E5, "log-q-missing-log-sigma", "log_q = -0.5 * (eps.pow(2) + math.log(2 * math.pi)) - log_sigma",
           "log_q = -0.5 * (eps.pow(2) + math.log(2 * math.pi))",
           "log q(z|x) per dimension", "the -log sigma term is missing"),
    Mutant(E5, "kl-against-standard-normal", "return log_q - self.prior.log_prob_per_dim(z)",
           "return log_q + 0.5 * (z.pow(2) + math.log(2 * math.pi))",
           "kl_per_dim", "KL against a standard normal"),
    Mutant(E5, "kl-sign", "return log_q - self.prior.log_prob_per_dim(z)",
           "return self.prior.log_prob_per_dim(z) - log_q",
           "kl_per_dim", "sign is flipped"),
    Mutant(E5, "kl-without-flow-logdet", "return log_q - self.prior.log_prob_per_dim(z)",
           "eps, _ = self.prior.to_noise(z)\n        return log_q + 0.5 * (eps.pow(2) + math.log(2 * math.pi))",
           "kl_per_dim", "the flow's log-determinant is missing"),
    Mutant(E5, "decoder-field-too-large", "MaskedPixelCNN(layers=decoder_layers,",
           "MaskedPixelCNN(layers=decoder_layers + 3,",
           "by the Jacobian", "outside the field of 2 masked 3x3 layers"),
    Mutant(E5, "decoder-kernel-5", "MaskedPixelCNN(layers=decoder_layers, kernel_size=3,",
           "MaskedPixelCNN(layers=decoder_layers, kernel_size=5,",
           "by the Jacobian", "must see only decoder_layers rows up"),
    Mutant(E5, "decoder-input-shifted", "self.decoder(2 * x - 1, ", "self.decoder(2 * torch.roll(x, -1, 3) - 1, ",
           "by the Jacobian", "teacher forcing"),
    Mutant(E5, "decoder-unscaled", "self.decoder(2 * x - 1, ", "self.decoder(x, ",
           "decoder's logits for the scaled images", "the decoder was given the 0/1 images"),
    Mutant(E5, "decoder-double-scaled", "self.decoder(2 * x - 1, ", "self.decoder(2 * (2 * x - 1) - 1, ",
           "decoder's logits for the scaled images", "scaled twice"),
    Mutant(E5, "decoder-ignores-z", "self.upsampler(z))", "self.upsampler(torch.zeros_like(z)))",
           "decoder's logits for the scaled images", "the decoder ignores z"),
    Mutant(E5, "free-bits-missing", "return per_group.clamp_min(self.free_bits_floor / self.free_bits_groups).sum()",
           "return per_group.sum()",
           "free_bits_kl", "no floor applied"),
    Mutant(E5, "free-bits-per-example",
           "per_group = kl_per_dim.view(batch, self.free_bits_groups, -1).sum(-1).mean(0)\n"
           "        # Below its floor a group gets no gradient: nothing is gained by pushing it to zero.\n"
           "        return per_group.clamp_min(self.free_bits_floor / self.free_bits_groups).sum()",
           "per_group = kl_per_dim.view(batch, self.free_bits_groups, -1).sum(-1)\n"
           "        return per_group.clamp_min(self.free_bits_floor / self.free_bits_groups).mean(0).sum()",
           "free_bits_kl", "not image by image"),
    Mutant(E5, "free-bits-whole-floor-per-group", "clamp_min(self.free_bits_floor / self.free_bits_groups)",
           "clamp_min(self.free_bits_floor)",
           "free_bits_kl", "not the whole floor"),
    Mutant(E5, "free-bits-floor-over-D", "clamp_min(self.free_bits_floor / self.free_bits_groups)",
           "clamp_min(self.free_bits_floor / kl_per_dim.shape[1])",
           "free_bits_kl", "divided by D"),
    Mutant(E5, "free-bits-clamp-max", "per_group.clamp_min(", "per_group.clamp_max(",
           "free_bits_kl", "clamp_min, not clamp_max"),
    Mutant(E5, "free-bits-groups-interleaved", "kl_per_dim.view(batch, self.free_bits_groups, -1).sum(-1)",
           "kl_per_dim.view(batch, -1, self.free_bits_groups).sum(1)",
           "free_bits_kl", "consecutive dimensions"),
    Mutant(E5, "loss-without-free-bits", "return recon.mean() + self.free_bits_kl(kl_per_dim), recon, "
           "kl_per_dim.sum(1)", "return recon.mean() + kl_per_dim.sum(1).mean(), recon, kl_per_dim.sum(1)",
           "loss: mean of", "use self.free_bits_kl"),
    Mutant(E5, "recon-per-pixel", "recon = -bernoulli_log_prob(self.logits(x, z), x)",
           "recon = -bernoulli_log_prob(self.logits(x, z), x) / 784",
           "loss: mean of", "sum over pixels"),
]
