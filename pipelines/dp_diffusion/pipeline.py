"""diffusers custom-pipeline entry point for ``DPDiffusionPipeline``.

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(MODEL, custom_pipeline="path/to/pipelines/dp_diffusion")

``DPDiffusionPipeline.push_to_hub`` uploads this file as ``pipeline.py`` next to the model, so a pushed repository
loads with ``DiffusionPipeline.from_pretrained(repo_id, custom_pipeline="pipeline")`` (diffusers asks for
``trust_remote_code`` to be set: this file is code).

The implementation lives in the ``dpdiffusion`` package (one source of truth for the privacy math); this file only
re-exports it, so ``pip install dpdiffusion`` is required.
"""

from dpdiffusion.pipeline_dp_diffusion import DPDiffusionPipeline, DPDiffusionPipelineOutput  # noqa: F401

__all__ = ["DPDiffusionPipeline", "DPDiffusionPipelineOutput"]
