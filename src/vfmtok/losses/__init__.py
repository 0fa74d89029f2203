"""Training losses (pure functions; networks are passed in) and the networks they use (LPIPS, discriminators)."""

from .adversarial import (
    adaptive_gan_weight,
    discriminator_loss,
    gan_weight,
    generator_loss,
    hinge_d_loss,
    hinge_g_loss,
    lecam_regularizer,
    non_saturating_d_loss,
    non_saturating_g_loss,
)
from .discriminator import (
    DinoDiscConfig,
    DinoDiscriminator,
    PatchGANConfig,
    PatchGANDiscriminator,
    backbone_token_features,
    vit_token_features,
)
from .feature import semantic_loss, token_cosine_similarity
from .lpips import LPIPS, find_lpips_weights, load_lpips
from .perceptual import perceptual_loss
from .reconstruction import l1_loss, l2_loss, official_pixel_loss, pixel_loss, psnr

__all__ = [
    "LPIPS", "DinoDiscConfig", "DinoDiscriminator", "PatchGANConfig", "PatchGANDiscriminator",
    "adaptive_gan_weight", "backbone_token_features", "discriminator_loss", "find_lpips_weights", "gan_weight",
    "generator_loss", "hinge_d_loss", "hinge_g_loss", "l1_loss", "l2_loss", "lecam_regularizer", "load_lpips",
    "non_saturating_d_loss", "non_saturating_g_loss", "official_pixel_loss", "perceptual_loss", "pixel_loss", "psnr",
    "semantic_loss", "token_cosine_similarity", "vit_token_features",
]
