"""msd3d: text-to-3D with mean-shift distillation (MSD) on diffusion priors."""

__version__ = "0.1.0"
