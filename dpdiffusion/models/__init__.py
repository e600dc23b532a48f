"""dpdiffusion.models."""
