"""optim muon: torch.optim.Muon on the blocks' matrices and AdamW on the rest, through the Trainer."""

import copy
import json
import re

import pytest
import torch

from scratchgpt import ScratchGPTForCausalLM
from scratchgpt.hub import model_card
from scratchgpt.training.arguments import parse_args
from scratchgpt.training.optimizers import MuonWithAdamW, hidden_matrices
from scratchgpt.training.run import main as train

from .test_training import tiny_run_args
from .testing_utils import tiny_config


def trainer_groups(model):
    """The Trainer's two groups for our model: decay on matrices and embeddings, none on biases and LayerNorms."""
    return [{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": 0.1},
            {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]


def batch(seed: int) -> torch.Tensor:
    return torch.randint(300, (2, 16), generator=torch.Generator().manual_seed(seed))


def train_steps(model, optimizer, seeds) -> None:
    for seed in seeds:
        ids = batch(seed)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_muon_takes_exactly_the_matrices_of_the_blocks():
    model = ScratchGPTForCausalLM(tiny_config())
    names = [name for name, _ in hidden_matrices(model)]
    expected = [f"model.layers.{i}.{m}.weight" for i in range(2)
                for m in ("attn.qkv", "attn.out_proj", "mlp.fc_in", "mlp.fc_out")]
    assert sorted(names) == sorted(expected)
    model.model.layers[0].attn.qkv.weight.requires_grad_(False)  # frozen weights are nobody's
    assert "model.layers.0.attn.qkv.weight" not in [name for name, _ in hidden_matrices(model)]


def test_one_step_equals_torch_muon_and_adamw_side_by_side():
    torch.manual_seed(0)
    ours = ScratchGPTForCausalLM(tiny_config())
    reference = copy.deepcopy(ours)
    optimizer = MuonWithAdamW(trainer_groups(ours), [p for _, p in hidden_matrices(ours)], lr=3e-3,
                              betas=(0.9, 0.95), muon_lr=0.02, muon_momentum=0.9, muon_weight_decay=0.01)
    matrices = {id(p) for _, p in hidden_matrices(reference)}
    groups = trainer_groups(reference)
    muon = torch.optim.Muon([p for p in groups[0]["params"] if id(p) in matrices], lr=0.02, momentum=0.9,
                            weight_decay=0.01)
    adamw = torch.optim.AdamW([{**g, "params": [p for p in g["params"] if id(p) not in matrices]} for g in groups],
                              lr=3e-3, betas=(0.9, 0.95))
    train_steps(ours, optimizer, [1, 2, 3])
    for seed in [1, 2, 3]:
        ids = batch(seed)
        reference(input_ids=ids, labels=ids).loss.backward()
        muon.step()
        adamw.step()
        muon.zero_grad()
        adamw.zero_grad()
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        assert torch.equal(a, b), name
    # AdamW's groups come first (the Trainer logs the first group's learning rate), with their own weight decay
    assert [g["lr"] for g in optimizer.param_groups] == [3e-3, 3e-3, 0.02]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0, 0.01]


def test_the_scheduler_scales_both_learning_rates():
    model = ScratchGPTForCausalLM(tiny_config())
    optimizer = MuonWithAdamW(trainer_groups(model), [p for _, p in hidden_matrices(model)], lr=1e-3, muon_lr=0.02)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    train_steps(model, optimizer, [1])
    scheduler.step()
    assert optimizer.adamw.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert optimizer.muon.param_groups[0]["lr"] == pytest.approx(0.01)


def test_a_saved_state_resumes_bitwise():
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(tiny_config())
    interrupted = copy.deepcopy(model)

    def optimizer_for(m):
        return MuonWithAdamW(trainer_groups(m), [p for _, p in hidden_matrices(m)], lr=3e-3, muon_lr=0.02)

    straight = optimizer_for(model)
    train_steps(model, straight, [1, 2, 3, 4])

    first = optimizer_for(interrupted)
    train_steps(interrupted, first, [1, 2])
    saved = copy.deepcopy(first.state_dict())
    assert saved["muon"]["state"] and saved["adamw"]["state"]  # Muon's momentum and AdamW's moments both kept
    second = optimizer_for(interrupted)
    second.load_state_dict(saved)
    assert second.state[hidden_matrices(interrupted)[0][1]]["momentum_buffer"].abs().sum() > 0  # the merged view
    train_steps(interrupted, second, [3, 4])
    for a, b in zip(model.parameters(), interrupted.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not the state of a Muon"):
        second.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())


def test_unknown_optim_and_bad_muon_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"optim 'adamw_muon' is not an optimizer: choose 'muon' or one of"):
        parse_args(["--optim", "adamw_muon", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="muon_momentum in"):
        parse_args(["--optim", "muon", "--muon_momentum", "1.5", "--output_dir", str(tmp_path)])
    args = parse_args(["--optim", "muon", "--muon_learning_rate", "0.05", "--output_dir", str(tmp_path)])[3]
    assert (args.optim, args.muon_learning_rate) == ("muon", 0.05)
    assert parse_args(["--output_dir", str(tmp_path)])[3].optim == "adamw_torch_fused"  # transformers' default kept


def test_muon_is_refused_under_fsdp_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="optim muon does not run under FSDP"):
        train(tiny_run_args(tmp_path, optim="muon", fsdp="full_shard"))
    assert not (tmp_path / "run" / "tokenizer").exists() and not (tmp_path / "run" / "data").exists()


def test_a_muon_run_trains_logs_the_split_and_names_the_optimizer(tmp_path, caplog):
    caplog.set_level("INFO", logger="scratchgpt")
    train(tiny_run_args(tmp_path, optim="muon", muon_learning_rate=0.03, max_steps=6, save_steps=3))
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("optimizer: Muon"))
    assert re.search(r"Muon \(lr 0.03, momentum 0.95, weight decay 0\) on 4 matrices of the blocks \(8,192 parameters\)"
                     r"; AdamW \(lr 0.003, weight decay 0\) on 13 other tensors", line), line
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())["training"]
    assert saved["optimizer"] == "muon"
    assert saved["muon"] == {"learning_rate": 0.03, "momentum": 0.95, "weight_decay": 0.0}
    assert "Muon on the blocks' matrices (peak learning rate 0.03, momentum 0.95) and AdamW" in model_card(run, "a/b")
    # the Trainer's checkpoints hold both optimizers' states: Muon's momentum for each of the 4 matrices
    state = torch.load(run / "checkpoint-3" / "optimizer.pt", weights_only=True)
    assert len(state["muon"]["state"]) == 4 and all("momentum_buffer" in s for s in state["muon"]["state"].values())
    assert len(state["adamw"]["state"]) == 13 and state["adamw"]["param_groups"][0]["initial_lr"] == 3e-3


@pytest.mark.peft
def test_a_lora_model_gives_muon_only_its_adapters():
    import peft

    model = peft.get_peft_model(ScratchGPTForCausalLM(tiny_config()),
                                peft.LoraConfig(r=4, target_modules=["qkv", "fc_in"]))
    names = [name for name, _ in hidden_matrices(model)]
    assert len(names) == 2 * 2 * 2 and all(".lora_A." in n or ".lora_B." in n for n in names)
