"""Custom operators: pure-PyTorch multi-scale deformable attention."""

from .ms_deform_attn import DeformSampling, MSDeformAttn, level_start_index, ms_deform_attn

__all__ = ["DeformSampling", "MSDeformAttn", "level_start_index", "ms_deform_attn"]
