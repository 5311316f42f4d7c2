"""TRL's trainers on a ScratchGPT model and tokenizer, unchanged: SFT with packing and assistant-only loss, DPO
with LoRA."""

import itertools
import math
from functools import lru_cache

import pytest
import torch
from datasets import Dataset

from scratchgpt import ScratchGPTConfig, ScratchGPTForCausalLM
from scratchgpt.data.sources import chitchat_conversations, iter_texts
from scratchgpt.tokenization import encode_chats, train_bpe_tokenizer

pytestmark = pytest.mark.trl


@lru_cache(maxsize=1)
def conversations() -> list:
    return [c[:4] for c in itertools.islice(chitchat_conversations(), 60) if len(c) >= 2]


@lru_cache(maxsize=1)
def tokenizer():
    return train_bpe_tokenizer(iter_texts(conversations()), vocab_size=400, show_progress=False)


def model(n_positions: int, attn_implementation: str = "sdpa") -> ScratchGPTForCausalLM:
    tok = tokenizer()
    config = ScratchGPTConfig(vocab_size=len(tok), n_positions=n_positions, n_embd=32, n_layer=2, n_head=4,
                              n_inner=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                              initializer_range=0.2,  # sharper attention than at 0.02: mixing sequences shows
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)
    built = ScratchGPTForCausalLM(config)
    built.set_attn_implementation(attn_implementation)
    return built


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_sft_with_packing_and_assistant_only_loss_equals_each_conversation_alone(tmp_path, attn_implementation):
    """SFTTrainer packs 8 conversations into one padding-free row longer than the context (position_ids restart at
    each); with learning rate 0 its first-step loss must equal the token-weighted mean over assistant tokens of each
    conversation run on its own."""
    from trl import SFTConfig, SFTTrainer

    chats = conversations()[:8]
    sft_model = model(n_positions=512, attn_implementation=attn_implementation)
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, packing=True, max_length=512,
                     per_device_train_batch_size=8, learning_rate=0.0, max_steps=1, logging_steps=1,
                     report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
                     bf16=False)  # TRL's default is bf16; the comparison below is in float32
    trainer = SFTTrainer(model=sft_model, args=args, train_dataset=Dataset.from_dict({"messages": chats}),
                         processing_class=tokenizer())
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and batch["input_ids"].shape[1] > sft_model.config.n_positions
    assert (batch["position_ids"] == 0).sum() == len(chats)  # one packed row, positions restart per conversation
    loss = trainer.train().training_loss

    ids, masks = encode_chats(tokenizer(), chats, return_assistant_masks=True)
    total, count = 0.0, 0
    with torch.no_grad():
        for conversation_ids, mask in zip(ids, masks):
            logits = sft_model.eval()(torch.tensor([conversation_ids])).logits[0, :-1]
            targets = torch.tensor([t if m else -100 for t, m in zip(conversation_ids, mask)])[1:]
            total += torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum").item()
            count += int((targets != -100).sum())
    assert count > 0 and loss == pytest.approx(total / count, rel=1e-5)


def test_dpo_with_lora_trains_the_adapter_only(tmp_path):
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    chats = conversations()[:16]
    rows = [{"prompt": [c[0]], "chosen": [{"role": "assistant", "content": c[1]["content"]}],
             "rejected": [{"role": "assistant", "content": chats[(i + 1) % len(chats)][1]["content"]}]}
            for i, c in enumerate(chats)]
    dpo_model = model(n_positions=256)
    base = {name: weight.clone() for name, weight in dpo_model.state_dict().items()}
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
                     max_length=256, logging_steps=1, report_to="none", use_cpu=True, save_strategy="no",
                     disable_tqdm=True, bf16=False)
    trainer = DPOTrainer(model=dpo_model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer(),
                         peft_config=LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM",
                                                target_modules=["qkv", "out_proj", "fc_in", "fc_out"]))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    # step 1: the policy (base + zero-initialised LoRA B) equals the reference (adapter off), so the loss is log 2
    assert len(losses) == 3 and losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert all(math.isfinite(value) for value in losses) and len(set(losses)) == 3
    peft_model = trainer.model
    lora_b = [weight for name, weight in peft_model.state_dict().items() if "lora_B" in name]
    assert len(lora_b) == 8 and all(weight.abs().max() > 0 for weight in lora_b)  # 4 layers x 2 blocks, trained
    for name, weight in peft_model.get_base_model().state_dict().items():
        original = name.replace(".base_layer", "")
        if "lora_" not in name:
            assert torch.equal(weight, base[original]), name  # the base model's weights are never updated
