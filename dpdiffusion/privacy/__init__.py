"""dpdiffusion.privacy."""
