"""Training, checkpoints, evaluation and assembly of an SGT, on the tiny model, on the CPU, in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from proxy.sgt import SGTRuntime, load_sgt_file
from sgt_tools.evaluate import Evaluator, draw_curve, load_transform
from sgt_tools.models import load_model
from sgt_tools.train import TrainConfig, Trainer
from sgt_tools.weights import assemble_sgt, load_weights

FAST = {"batch_size": 4, "width": 16, "response_tokens": 0, "checkpoint_every": 0, "lr": 1e-2}


def _trainer(model: Path, **overrides) -> Trainer:
    return Trainer(model, TrainConfig(**{**FAST, **overrides}))


def test_loss_goes_down(tiny_model: Path) -> None:
    trainer = _trainer(tiny_model, steps=30, nn_weight=1.0)
    history = trainer.train(progress=False)
    first = sum(h["loss"] for h in history[:5]) / 5
    last = sum(h["loss"] for h in history[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert history[-1]["cos"] < history[0]["cos"]


def test_checkpoint_resume_is_exact(tiny_model: Path, tmp_path: Path) -> None:
    straight = _trainer(tiny_model, steps=4)
    straight.train(progress=False)
    ckpt = tmp_path / "run.ckpt"
    half = _trainer(tiny_model, steps=2)
    half.train(checkpoint=ckpt, progress=False)
    assert torch.load(ckpt, weights_only=True)["step"] == 2
    resumed = _trainer(tiny_model, steps=4)
    resumed.load_checkpoint(ckpt)
    resumed.train(progress=False)
    for key, value in straight.transform.state_dict().items():
        torch.testing.assert_close(resumed.transform.state_dict()[key], value)


def test_weights_assemble_into_a_loadable_sgt(tiny_model: Path, tmp_path: Path) -> None:
    trainer = _trainer(tiny_model, steps=2)
    trainer.train(progress=False)
    trainer.write(tmp_path / "full.pt", tmp_path / "weights.pt")
    weights = load_weights(tmp_path / "weights.pt")
    assert weights["training"]["trained"] and weights["estimator"]["linear_skip"]
    out = assemble_sgt(tiny_model, tmp_path / "weights.pt", tmp_path / "assembled.pt")
    data = load_sgt_file(out)
    assert data["version"] == 1 and data["training"]["steps"] == 2
    runtime = SGTRuntime.load(out)
    prompt = runtime.renderer.render_chat([{"role": "user", "content": "hello there"}])
    assert runtime.obfuscate(prompt).shape == (len(prompt), 64)


def test_assemble_refuses_another_table(tiny_model: Path, tmp_path: Path) -> None:
    trainer = _trainer(tiny_model, steps=1)
    trainer.train(progress=False)
    trainer.write(None, tmp_path / "weights.pt")
    data = torch.load(tmp_path / "weights.pt", weights_only=True)
    data["table"]["sum"] += 1.0
    torch.save(data, tmp_path / "other.pt")
    with pytest.raises(Exception, match="another embedding table"):
        assemble_sgt(tiny_model, tmp_path / "other.pt", tmp_path / "x.pt")


def test_eval_keys_attack_and_curve(tiny_model: Path, tiny_sgt: Path, tmp_path: Path) -> None:
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps({"question": f"what is {w}?", "answers": [w]}) for w in ("cat", "dog", "sun")))
    model, tokenizer = load_model(tiny_model)
    evaluator = Evaluator(model, tokenizer, qa_path=str(qa), max_new_tokens=4)
    result = evaluator.evaluate(load_transform(tiny_sgt), attack_steps=5, random_prompts=20, draws=1, hidden=32)
    for key in ("nn_l2", "nn_cos", "obfuscation_score", "top1_agreement", "kl", "qa_clean", "qa_transformed"):
        assert 0.0 <= result[key] <= (1.0 if key != "kl" else 1e9), key
    assert set(result["attack"]) >= {"linear", "mlp", "linear_context", "mlp_context"}
    assert result["nn_l2_clean"] == 1.0
    point = {"nn_l2": 0.5, "nn_cos": 0.4, "qa_ratio": 0.9}
    png = draw_curve({"gaussian": [{"scale": 1.0, **point}], "trained": [{"alpha": 1.0, **point}]}, tmp_path / "c.png")
    assert png.stat().st_size > 1000


def test_sigma_stays_above_its_floor(tiny_model: Path) -> None:
    """The floor is part of the transform: however training pushes, sigma >= min_sigma x the table std."""
    trainer = _trainer(tiny_model, steps=15, min_sigma=0.5, sigma_weight=0.0, noise_scale=0.05, lr=5e-2)
    trainer.train(progress=False)
    x = trainer.table[torch.randint(len(trainer.table), (6, 10))]
    floor = 0.5 * trainer.table_std
    assert bool((trainer.transform.sigma(x) >= floor * (1 - 1e-5)).all())
    # and it travels in the weights file, so that serving applies the same floor
    state = trainer.transform.state_dict()
    torch.testing.assert_close(state["sigma_floor"], floor)


def test_log_sigma_reward_raises_sigma(tiny_model: Path) -> None:
    quiet = _trainer(tiny_model, steps=20, lr=5e-2, sigma_weight=0.0)
    quiet.train(progress=False)
    loud = _trainer(tiny_model, steps=20, lr=5e-2, sigma_weight=5.0)
    loud.train(progress=False)
    assert loud.history[-1]["log_sigma"] > quiet.history[-1]["log_sigma"] + 0.1


def test_adversarial_inverters_train_and_resume_exactly(tiny_model: Path, tmp_path: Path) -> None:
    """Both inverters (rows, layer-1 readout) learn alongside; their state is in the checkpoint."""
    adv = {"adv_weight": 1.0, "readout_weight": 1.0, "adv_width": 32, "random_fraction": 0.5}
    straight = _trainer(tiny_model, steps=4, **adv)
    history = straight.train(progress=False)
    for key in ("rows_evasion", "rows_acc", "readout_evasion", "readout_acc", "log_sigma"):
        assert key in history[-1], key
    assert all(h["rows_evasion"] >= 0 for h in history)
    ckpt = tmp_path / "adv.ckpt"
    half = _trainer(tiny_model, steps=2, **adv)
    half.train(checkpoint=ckpt, progress=False)
    resumed = _trainer(tiny_model, steps=4, **adv)
    resumed.load_checkpoint(ckpt)
    resumed.train(progress=False)
    for key, value in straight.inverters.state_dict().items():
        torch.testing.assert_close(resumed.inverters.state_dict()[key], value)
    for key, value in straight.transform.state_dict().items():
        torch.testing.assert_close(resumed.transform.state_dict()[key], value)


def test_adversary_learns_and_the_transform_fights_back(tiny_model: Path) -> None:
    """The row inverter learns to name tokens; with a privacy weight the transform lowers its hit rate."""
    base = {"adv_width": 64, "steps": 25, "random_fraction": 1.0, "adv_lr": 1e-2, "lr": 5e-2}
    base |= {"min_sigma": 0.0, "sigma_weight": 0.0}  # the adversary alone moves sigma here
    watched = _trainer(tiny_model, adv_weight=1e-9, **base)  # the adversary learns, the transform ignores it
    watched.train(progress=False)
    fought = _trainer(tiny_model, adv_weight=5.0, **base)
    fought.train(progress=False)
    late = slice(-8, None)
    acc_watched = sum(h["rows_acc"] for h in watched.history[late]) / 8
    acc_fought = sum(h["rows_acc"] for h in fought.history[late]) / 8
    assert acc_watched > 0.4, acc_watched
    assert acc_fought < 0.75 * acc_watched, (acc_fought, acc_watched)
    assert fought.history[-1]["log_sigma"] > watched.history[-1]["log_sigma"]  # it fought with noise


def test_echo_examples_mask_the_canary_and_score_only_its_facts(tiny_model: Path) -> None:
    """Trained on the canary train split: the canary obfuscated, the instruction clean, only fact tokens scored."""
    from sgt_tools.canaries import make_canaries, split
    from sgt_tools.train import echo_examples

    trainer = _trainer(tiny_model, steps=2, echo_weight=1.0, echo_batch=2, echo_canaries=8)
    train = split(make_canaries(8), "train")
    assert all(c.split == "train" for c in train)
    examples = echo_examples(trainer.renderer, trainer.tokenizer, train[:1])
    decode = trainer.renderer.decode
    for example, scored in examples:
        assert decode(example.ids[example.mask].tolist()) == train[0].text  # the canary alone is obfuscated
        target = decode(torch.roll(example.ids, -1)[scored].tolist())
        assert train[0].number in target and train[0].last in target
        assert "Say my previous" not in target
    history = trainer.train(progress=False)
    assert all(h["echo"] >= 0 for h in history) and len(trainer.echo) == 4 * 5
