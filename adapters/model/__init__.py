"""Model machinery: weights and kits, the diffusion and simulated engines, CLIP, upscalers."""
