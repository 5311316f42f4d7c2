"""scratchgpt: a from-scratch GPT language model that lives natively in the Hugging Face ecosystem.

Importing the package registers the model with the ``transformers`` Auto classes, so that
``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM`` resolve ``model_type="scratchgpt"``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .modeling import PRESETS, ScratchGPTConfig, ScratchGPTForCausalLM, ScratchGPTModel, ScratchGPTPreTrainedModel


__version__ = "0.1.0"
__all__ = ["PRESETS", "ScratchGPTConfig", "ScratchGPTForCausalLM", "ScratchGPTModel", "ScratchGPTPreTrainedModel"]

AutoConfig.register(ScratchGPTConfig.model_type, ScratchGPTConfig, exist_ok=True)
AutoModel.register(ScratchGPTConfig, ScratchGPTModel, exist_ok=True)
AutoModelForCausalLM.register(ScratchGPTConfig, ScratchGPTForCausalLM, exist_ok=True)

# save_pretrained then copies the two model files into the checkpoint and writes `auto_map`, so that
# `from_pretrained(path, trust_remote_code=True)` works where scratchgpt is not installed.
ScratchGPTConfig.register_for_auto_class()
ScratchGPTModel.register_for_auto_class("AutoModel")
ScratchGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")
