"""Few-shot out-of-domain synthesis with a frozen diffusion model (science core, no orchestration)."""

__version__ = "0.1.0"
