"""The data owner's privacy loop: previews and the model's consequence at epsilon, feedback, one accepted release."""

from .accept import LoopResult
from .privacy_loop import VERDICTS, LoopStep, PrivacyLoop

__all__ = ["VERDICTS", "LoopResult", "LoopStep", "PrivacyLoop"]
