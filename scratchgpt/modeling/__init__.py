"""The ScratchGPT model: configuration, modeling, and conversion to and from other formats."""

from .configuration_scratchgpt import PRESETS, ScratchGPTConfig
from .modeling_scratchgpt import ScratchGPTForCausalLM, ScratchGPTModel, ScratchGPTPreTrainedModel


__all__ = ["PRESETS", "ScratchGPTConfig", "ScratchGPTForCausalLM", "ScratchGPTModel", "ScratchGPTPreTrainedModel"]
