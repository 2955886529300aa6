"""vlae: the Variational Lossy Autoencoder (Chen et al., ICLR 2017) in PyTorch.

The paper's building blocks, one module each:

- :mod:`vlae.masked_conv` -- masked convolutions (mask types A and B)
- :mod:`vlae.pixelcnn` -- PixelCNN decoders with an exact receptive field
- :mod:`vlae.made` -- MADE
- :mod:`vlae.flows` -- AF prior, IAF posterior, affine autoregressive steps
- :mod:`vlae.encoder` -- ResNet encoder q(z|x), flat or spatial (ResNet or DenseNet)
- :mod:`vlae.conditioning` -- z -> the decoder's conditioning maps, flat and spatial
- :mod:`vlae.spatial_prior` -- AF prior over a latent map (PixelCNN flow steps)
- :mod:`vlae.observation` -- observation models: Bernoulli (binary), discretized logistic mixture (8-bit)
- :mod:`vlae.model` -- the VLAE, its ELBO with free bits, and the IW bound
- :mod:`vlae.config` -- configuration dataclasses, validation and overrides
- :mod:`vlae.presets` -- the named configurations (the paper's and CPU-sized ones)
"""

from .conditioning import ConditionUpsampler, SpatialUpsampler
from .config import Config, EvalConfig, ModelConfig, TrainConfig, apply_overrides
from .encoder import Encoder, SpatialEncoder
from .errors import VLAEError
from .flows import AffineAutoregressive, AFPrior, GaussianPrior, IAFPosterior
from .made import MADE
from .masked_conv import MaskedConv2d, make_mask
from .model import VLAE, Terms, nats_to_bits_per_dim
from .pixelcnn import FactorizedDecoder, GatedPixelCNN, MaskedPixelCNN
from .presets import PRESETS, get_preset
from .spatial_prior import SpatialAFPrior, latent_map

__version__ = "0.1.0"

__all__ = [
    "VLAE",
    "Terms",
    "nats_to_bits_per_dim",
    "Config",
    "ModelConfig",
    "TrainConfig",
    "EvalConfig",
    "PRESETS",
    "get_preset",
    "apply_overrides",
    "MaskedConv2d",
    "make_mask",
    "MaskedPixelCNN",
    "GatedPixelCNN",
    "FactorizedDecoder",
    "ConditionUpsampler",
    "MADE",
    "AffineAutoregressive",
    "AFPrior",
    "GaussianPrior",
    "IAFPosterior",
    "Encoder",
    "VLAEError",
    "SpatialEncoder",
    "SpatialUpsampler",
    "SpatialAFPrior",
    "latent_map",
]
