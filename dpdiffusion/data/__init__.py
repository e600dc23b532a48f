"""dpdiffusion.data."""
