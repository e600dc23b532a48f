"""dpdiffusion.evaluation."""
