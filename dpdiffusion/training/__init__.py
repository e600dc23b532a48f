"""dpdiffusion.training."""
