"""Planted bugs for the exercise checkers (used by ``tests/test_exercises.py``).

Each :class:`Mutant` is a text substitution on a reference solution in
``exercises/solutions/``: the typical mistake a learner makes, written the way a
learner would write it. A checker is only useful if it catches every one of
them, and with the right diagnosis, before any training run: so each mutant
names the check that must fail and a phrase of the hint that must be shown.

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
    fails: str  # a substring of the name of a check that must FAIL
    says: str  # a substring the checker's output must contain (the diagnosis)
    count: int = 1

    @property
    def id(self) -> str:
        return f"{self.exercise[:11]}-{self.name}"


def mutate(source: str, mutant: Mutant) -> str:
    """``source`` with the planted bug; raises if ``old`` does not occur exactly ``count`` times."""
    found = source.count(mutant.old)
    if found != mutant.count:
        raise AssertionError(f"mutant {mutant.id}: {mutant.old!r} occurs {found} times in the solution, "
                             f"expected {mutant.count}")
    mutated = source.replace(mutant.old, mutant.new)
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
    Mutant(E1, "non-square-centre", "cy, cx = kh // 2, kw // 2", "cy, cx = kh // 2, kh // 2",
           "non-square kernels", "you used one side for both"),
    Mutant(E1, "no-validation", "    if kh < 1 or kw < 1 or kh % 2 == 0 or kw % 2 == 0:\n"
           '        raise ValueError(f"masked convolutions need odd kernel sides, got {(kh, kw)}")\n', "",
           "rejects even sides", "raise ValueError"),
    Mutant(E1, "mask-plain-attribute", 'self.register_buffer("mask", make_mask((kh, kw), mask_type))',
           "self.mask = make_mask((kh, kw), mask_type)",
           "buffer named 'mask'", "register_buffer"),
    Mutant(E1, "mask-as-parameter", 'self.register_buffer("mask", make_mask((kh, kw), mask_type))',
           "self.mask = nn.Parameter(make_mask((kh, kw), mask_type))",
           "buffer named 'mask'", "trained by the optimiser"),
    Mutant(E1, "mask-ignored", "F.conv2d(x, self.weight * self.mask,", "F.conv2d(x, self.weight,",
           "convolution of x with weight * mask", "forward ignores the mask"),
    Mutant(E1, "weight-overwritten", "        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, "
           "self.padding)", "        self.weight.data.mul_(self.mask)\n        return F.conv2d(x, self.weight, "
           "self.bias, self.stride, self.padding)",
           "leaves the weight untouched", "do not write into the weight"),
    Mutant(E1, "mask-at-init-only", 'self.register_buffer("mask", make_mask((kh, kw), mask_type))',
           'self.register_buffer("mask", make_mask((kh, kw), mask_type))\n'
           "        with torch.no_grad():\n            self.weight.mul_(self.mask)\n"
           "        self.forward = lambda x: F.conv2d(x, self.weight, self.bias, self.stride, self.padding)",
           "mask still holds after the weight changes", "not only once in __init__"),

    # ------------------------------------------------------------------ exercise 2: PixelCNN
    Mutant(E2, "first-layer-type-B", 'MaskedConv2d(1, channels, first_kernel, "A")',
           'MaskedConv2d(1, channels, first_kernel, "B")',
           "autoregressive", "depends on the pixel itself"),
    Mutant(E2, "unmasked-hidden-layers", 'MaskedConv2d(channels, channels, kernel, "B")',
           "nn.Conv2d(channels, channels, kernel, padding=kernel // 2)",
           "autoregressive", "every layer that mixes neighbouring positions must be masked"),
    Mutant(E2, "3x3-output-layer", "self.out = nn.Conv2d(channels, 1, 1)",
           "self.out = nn.Conv2d(channels, 1, 3, padding=1)",
           "autoregressive", "the output layer must be a 1x1 convolution"),
    Mutant(E2, "input-ignored", "h = F.relu(self.first(2 * x - 1))", "h = F.relu(self.first(0 * x - 1))",
           "read the earlier pixels", "feed x through all the layers"),
    Mutant(E2, "nll-sign", "    return nll.flatten(1).sum(1)", "    return -nll.flatten(1).sum(1)",
           "worked case", "this is the log-likelihood"),
    Mutant(E2, "nll-mean-over-pixels", "    return nll.flatten(1).sum(1)", "    return nll.flatten(1).mean(1)",
           "worked case", "sum over the pixels"),
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
    Mutant(E3, "kl-after-training-ignores-depth", "model = VLAE(vae_config(decoder_layers, decoder_kernel))",
           "model = VLAE(vae_config(1, decoder_kernel))",
           "kl_after_training builds", "pass decoder_layers and decoder_kernel on"),
    Mutant(E3, "kl-after-training-untrained", "    train_vae(model, train_images, steps, seed=seed)\n", "",
           "kl_after_training builds", "it was not trained"),
    Mutant(E3, "final-kl-is-nelbo", "model.terms(images[i:i + batch_size]).kl",
           "model.terms(images[i:i + batch_size]).nelbo",
           "final_kl", "negative ELBO"),

    # ------------------------------------------------------------------ exercise 4: MADE and the AF prior
    Mutant(E4, "output-mask-geq", "(degrees[0][:, None] > degrees[-1][None, :])",
           "(degrees[0][:, None] >= degrees[-1][None, :])",
           "output layer reads only strictly lower", "needs a strict >"),
    Mutant(E4, "hidden-mask-strict", "(d_out[:, None] >= d_in[None, :])", "(d_out[:, None] > d_in[None, :])",
           "hidden layers read units", "uses a strict >"),
    Mutant(E4, "degrees-from-order-values",
           "inputs[torch.as_tensor(list(order), dtype=torch.long)] = torch.arange(1, features + 1)",
           "inputs[:] = torch.as_tensor(list(order), dtype=torch.long) + 1",
           "input degrees are 1 + the position", "degree order[i] + 1"),
    Mutant(E4, "hidden-degrees-from-zero", "torch.arange(width) % cycle + 1", "torch.arange(width) % cycle",
           "hidden degrees lie in 1..D-1", "reads nothing"),
    Mutant(E4, "logdet-sign", "return x * log_scale.exp() + shift, log_scale.sum(-1)",
           "return x * log_scale.exp() + shift, -log_scale.sum(-1)",
           "log-det equals", "wrong sign"),
    Mutant(E4, "inverse-one-pass", "        for _ in range(self.features):\n            log_scale, shift = "
           "self.params(x)", "        for _ in range(1):\n            log_scale, shift = self.params(x)",
           "inverse(forward(x)) = x", "D times"),
    Mutant(E4, "order-not-reversed", "orders = [forward if k % 2 == 0 else forward[::-1] for k in range(steps)]",
           "orders = [forward for k in range(steps)]",
           "reversed between consecutive steps", "Reverse the order between steps"),
    Mutant(E4, "log-prob-without-logdet", "return (-0.5 * (eps.pow(2) + math.log(2 * math.pi))).sum(-1) + logdet",
           "return (-0.5 * (eps.pow(2) + math.log(2 * math.pi))).sum(-1)",
           "change-of-variables formula", "the log-det is missing"),
    Mutant(E4, "sample-steps-in-forward-order", "for step in reversed(self.steps):", "for step in self.steps:",
           "sample inverts to_noise", "reverse order"),

    # ------------------------------------------------------------------ exercise 5: the complete VLAE
    Mutant(E5, "kl-against-standard-normal", "return log_q - self.prior.log_prob_per_dim(z)",
           "return log_q + 0.5 * (z.pow(2) + math.log(2 * math.pi))",
           "under the model's AF prior", "KL against a standard normal"),
    Mutant(E5, "kl-sign", "return log_q - self.prior.log_prob_per_dim(z)",
           "return self.prior.log_prob_per_dim(z) - log_q",
           "under the model's AF prior", "sign is flipped"),
    Mutant(E5, "decoder-ignores-z", "return self.decoder(x, self.upsampler(z))",
           "return self.decoder(x, self.upsampler(torch.zeros_like(z)))",
           "conditioned on z", "the decoder ignores z"),
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
    Mutant(E5, "sigma-is-log-sigma", "z = mu + log_sigma.exp() * eps", "z = mu + log_sigma * eps",
           "reparameterised", "sigma = log_sigma.exp()"),
    Mutant(E5, "log-q-missing-log-sigma", "log_q = -0.5 * (eps.pow(2) + math.log(2 * math.pi)) - log_sigma",
           "log_q = -0.5 * (eps.pow(2) + math.log(2 * math.pi))",
           "log q(z|x) per dimension", "the -log sigma term is missing"),
    Mutant(E5, "loss-without-free-bits", "return recon.mean() + self.free_bits_kl(kl_per_dim), recon, "
           "kl_per_dim.sum(1)", "return recon.mean() + kl_per_dim.sum(1).mean(), recon, kl_per_dim.sum(1)",
           "loss: mean of", "use self.free_bits_kl"),
    Mutant(E5, "z-detached", "z = mu + log_sigma.exp() * eps", "z = (mu + log_sigma.exp() * eps).detach()",
           "reparameterised", "no gradient reaches the encoder"),
]
