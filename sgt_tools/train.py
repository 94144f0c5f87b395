"""``python -m sgt_tools train``: learn the mean and std estimators against a frozen causal LM.

Loss, per batch (the LM never changes, only the transform learns):

- utility: ``KL(LLM(X) || LLM(X~))`` of the next-token distributions, averaged over the
  positions from the first obfuscated token on (prompt and clean continuation);
- ``|cos(x, x~)|`` over the obfuscated rows: pushes each row away from its token's direction;
- ``(||x~|| / n - 1)^2`` with ``n`` the table's median row norm: keeps rows at a typical norm,
  so that neither norm nor distance betrays the token;
- optionally a nearest-neighbour hinge: the true token must not be the row's nearest table
  row, by cosine or by L2, with a margin;
- privacy against a holder of the SGT (``adv_weight``, ``readout_weight``): an inverter is
  trained alongside, step for step, to name each obfuscated token from the transformed rows
  (with their neighbours) and another from the frozen LM's hidden state at
  ``readout_layer``, both by regression onto the embedding table (so they can name tokens
  never seen in training); the transform is rewarded for their failure, ``-log(1 - p_true)``;
- noise that cannot collapse: ``min_sigma`` is a hard floor under sigma (a multiple of the
  table's per-dimension std, part of the transform) and ``sigma_weight`` rewards
  ``log(sigma / std)`` up to ``log(sigma_cap)``;
- echo resistance (``echo_weight``), trained on the canary *train* split only
  (:mod:`sgt_tools.canaries`; the attacks are judged on the held-out split, whose names,
  cities and phrasings are disjoint): a clean echo instruction of this module's own wording
  (not the attack suite's) follows the obfuscated canary, and the transform is penalised by
  ``-log(1 - p)`` of each private-fact token of the echo under the frozen LM (teacher-forced).
  The canary train prompts then also join the utility term with the model's clean answers,
  so that the genuine task that needs the facts is kept while their echo is fought.

Checkpoints hold the transform, the optimiser and every random state, so that a resumed run
continues exactly where it stopped.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from proxy.sgt.file import save_sgt_file
from proxy.sgt.prompt import PromptRenderer
from proxy.sgt.transform import EstimatorConfig, StainedGlassTransform
from sgt_tools import lab
from sgt_tools.build import sgt_content
from sgt_tools.lab import Example
from sgt_tools.weights import save_weights


@dataclass
class TrainConfig:
    """Every knob of a training run (stored in checkpoints and in the SGT file)."""

    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    utility_weight: float = 1.0
    cos_weight: float = 1.0
    norm_weight: float = 1.0
    nn_weight: float = 0.0
    nn_margin: float = 0.05
    width: int = 256
    kernel_size: int = 3
    noise_scale: float = 0.3
    linear_skip: bool = True
    random_fraction: float = 0.25
    response_tokens: int = 32
    checkpoint_every: int = 200
    time_limit: float = 0.0  # seconds of training after which the run stops early (0: none)
    corpus: str | None = None
    # privacy terms (0: off; min_sigma = sigma_weight = 0 is the earlier training, whose sigma collapsed)
    min_sigma: float = 0.5  # floor under sigma, x the table's per-dimension std (part of the transform)
    sigma_weight: float = 0.3  # reward for log(sigma / table std), capped at log(sigma_cap)
    sigma_cap: float = 2.0
    adv_weight: float = 0.0  # privacy weight against the jointly trained row inverter
    readout_weight: float = 0.0  # ... and against the jointly trained hidden-state readout
    readout_layer: int = 1
    adv_width: int = 1024
    adv_lr: float = 1e-3
    adv_steps: int = 1  # inverter updates per transform update
    adv_context: bool = True  # the inverters see each row's neighbours too
    echo_weight: float = 0.0  # echo resistance on the canary train split
    echo_batch: int = 8  # echo sequences per step
    echo_canaries: int = 300  # canaries generated (the train half is used); the same seed as the eval's
    extra: dict[str, Any] = field(default_factory=dict)


def _lr_factor(step: int, total: int, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def obfuscation_terms(
    x: torch.Tensor, xt: torch.Tensor, ids: torch.Tensor, table: torch.Tensor, typical_norm: float, margin: float
) -> dict[str, torch.Tensor]:
    """|cos|, norm and nearest-neighbour hinge terms over obfuscated rows x -> xt (both [N, hidden])."""
    cos = F.cosine_similarity(x, xt, dim=-1).abs().mean()
    norm = ((xt.norm(dim=-1) / typical_norm - 1) ** 2).mean()
    terms = {"cos": cos, "norm": norm}
    if margin >= 0:
        rows = torch.arange(len(ids), device=ids.device)
        sim = F.normalize(xt, dim=-1) @ F.normalize(table, dim=-1).T
        true = sim[rows, ids]
        best_other = sim.index_put((rows, ids), torch.tensor(-2.0, device=sim.device)).amax(-1)
        dist = (table * table).sum(-1)[None, :] - 2 * xt @ table.T  # ||xt - t||^2 - ||xt||^2
        true_d = dist[rows, ids]
        best_other_d = dist.index_put((rows, ids), torch.tensor(float("inf"), device=dist.device)).amin(-1)
        scale = typical_norm**2
        terms["nn"] = (F.relu(true - best_other + margin) + F.relu((best_other_d - true_d) / scale + margin)).mean()
    return terms


class Inverter(nn.Module):
    """The attacker trained alongside the transform: rows (or hidden states) -> a row of the table.

    Regression onto the embedding table, scored as a softmax over the whole table by cosine,
    so it can name tokens it never saw, unlike a classifier over the tokens of its training set.
    """

    def __init__(self, hidden: int, width: int, context: bool) -> None:
        super().__init__()
        self.context = context
        inp = hidden * (3 if context else 1)
        self.net = nn.Sequential(nn.LayerNorm(inp), nn.Linear(inp, width), nn.GELU(), nn.Linear(width, hidden))
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))

    def features(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[N, (3 x) hidden]: each masked position's vector, with its neighbours' if ``context``."""
        seq = seq.float()
        if self.context:
            padded = F.pad(seq, (0, 0, 1, 1))
            seq = torch.cat([padded[:, :-2], padded[:, 1:-1], padded[:, 2:]], dim=-1)
        return seq[mask]

    def logits(self, features: torch.Tensor, unit_table: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features), dim=-1) @ unit_table.T * self.log_scale.exp()


def evasion(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``-log(1 - p_true)``: small when the inverter misses, steep when it is sure (bounded below by 0)."""
    rows = torch.arange(len(ids), device=ids.device)
    others = logits.index_put((rows, ids), torch.tensor(float("-inf"), device=logits.device))
    return (logits.logsumexp(-1) - others.logsumexp(-1)).mean()


# Echo instructions for training: worded apart from the attack suite's variants, so that the
# held-out echo numbers measure resistance to instructions the transform never saw.
ECHO_TRAIN_REPEAT = (
    "Say my previous message again, word for word.",
    "Echo back everything I wrote before this line.",
    "Please copy my last message exactly as I typed it.",
)
ECHO_TRAIN_LIST = (
    "Which name, number, city and e-mail address did I give you?",
    "Extract the personal details from my message.",
)


def echo_examples(
    renderer: PromptRenderer, tokenizer: PreTrainedTokenizerBase, canaries: Sequence[Any]
) -> list[tuple[Example, torch.Tensor]]:
    """(sequence, positions whose next token is a private fact) for each canary x echo instruction.

    The sequence: the canary as an obfuscated user turn, the instruction as a clean user turn,
    the generation prompt, then the echo an obedient model would write (clean, teacher-forced).
    """
    out = []
    for c in canaries:
        listing = f"Name: {c.first} {c.last}\nNumber: {c.number}\nCity: {c.city}\nE-mail: {c.email}"
        pairs = [(ins, c.text) for ins in ECHO_TRAIN_REPEAT] + [(ins, listing) for ins in ECHO_TRAIN_LIST]
        for instruction, target in pairs:
            prompt = renderer.render_chat(
                [{"role": "user", "content": c.text}, {"role": "user", "content": instruction}]
            )
            mask = prompt.mask.clone()
            where = mask.nonzero()[:, 0]
            gaps = (where[1:] - where[:-1] > 1).nonzero()
            if len(gaps):  # keep the first content (the canary) obfuscated, the instruction clean
                mask[where[int(gaps[0, 0]) + 1] :] = False
            enc = tokenizer(target, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = torch.tensor(enc["input_ids"], dtype=torch.long), enc["offset_mapping"]
            spans = [(m.start(), m.end()) for v in c.facts.values() for m in re.finditer(re.escape(v), target)]
            fact = torch.tensor([any(a < e and b > s for s, e in spans) for a, b in offsets], dtype=torch.bool)
            full = torch.cat([prompt.ids, ids])
            scored = torch.zeros(len(full), dtype=torch.bool)
            scored[len(prompt.ids) - 1 : len(full) - 1] = fact  # the logit at t predicts token t + 1
            out.append((Example(full, torch.cat([mask, torch.zeros(len(ids), dtype=torch.bool)]), 0), scored))
    return out


class Trainer:
    """One training run: model, data, transform, optimiser, checkpoints."""

    def __init__(self, model_path: str | os.PathLike, config: TrainConfig, device: str = "cpu") -> None:
        from sgt_tools.models import load_model

        self.config = config
        self.device = torch.device(device)
        self.model_path = str(model_path)
        torch.manual_seed(config.seed)
        self.model, self.tokenizer = load_model(model_path)
        self.model.to(self.device).eval().requires_grad_(False)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
        self.table = self.model.get_input_embeddings().weight.detach().float()
        self.typical_norm = float(self.table.norm(dim=-1).median())
        self.renderer = lab.renderer_for(self.tokenizer)
        estimator = EstimatorConfig(
            hidden_size=int(self.table.shape[1]),
            width=config.width,
            kernel_size=config.kernel_size,
            noise_scale=config.noise_scale,
            linear_skip=config.linear_skip,
            min_sigma=config.min_sigma,
        )
        self.table_std = self.table.std(dim=0)
        self.transform = StainedGlassTransform(estimator, table_std=self.table_std.cpu()).to(self.device)
        self.optimizer = torch.optim.AdamW(self.transform.parameters(), lr=config.lr, weight_decay=0.0)
        self.unit_table = F.normalize(self.table, dim=-1)
        hidden = int(self.table.shape[1])
        self.inverters = nn.ModuleDict()
        if config.adv_weight > 0:
            self.inverters["rows"] = Inverter(hidden, config.adv_width, config.adv_context)
        if config.readout_weight > 0:
            self.inverters["readout"] = Inverter(hidden, config.adv_width, config.adv_context)
        self.inverters.to(self.device)
        self.inv_optimizer = (
            torch.optim.Adam(self.inverters.parameters(), lr=config.adv_lr) if len(self.inverters) else None
        )
        self.data_rng = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0
        self._pending: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None
        self.examples = self._examples()

    def _examples(self) -> list[lab.Example]:
        texts = lab.corpus_lines(self.config.corpus)
        self.echo: list[tuple[Example, torch.Tensor]] = []
        if self.config.echo_weight > 0:
            from sgt_tools.canaries import make_canaries, split

            train = split(make_canaries(self.config.echo_canaries), "train")
            self.echo = echo_examples(self.renderer, self.tokenizer, train)
            texts = texts + [c.text for c in train]  # the genuine task that needs the facts: kept by the KL
        responses = None
        if self.config.response_tokens > 0:  # the model's own clean answers, scored too
            prompts = [self.renderer.render_chat([{"role": "user", "content": t}]) for t in texts]
            embeds = [lab.rendered_rows(self.table, p) for p in prompts]
            responses = lab.greedy(self.model, embeds, self.config.response_tokens, lab.eos_ids(self.tokenizer))
        return lab.chat_examples(self.renderer, texts, responses)

    def _batch(self) -> lab.Batch:
        n_random = round(self.config.batch_size * self.config.random_fraction)
        picks = torch.randint(len(self.examples), (self.config.batch_size - n_random,), generator=self.data_rng)
        chosen = [self.examples[int(i)] for i in picks]
        chosen += lab.random_examples(self.renderer, int(self.table.shape[0]), n_random, self.data_rng)
        return lab.collate(chosen).to(self.device)

    def loss(self, batch: lab.Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The transform's loss; also trains the inverters (if any) one step on this batch's rows."""
        cfg = self.config
        x = self.table[batch.ids]
        with torch.no_grad():
            clean = self.model(inputs_embeds=x, attention_mask=batch.attention).logits.float().log_softmax(-1)
        xt, sigma = self.transform.parts(x, batch.mask)
        readout = "readout" in self.inverters
        result = self.model(inputs_embeds=xt, attention_mask=batch.attention, output_hidden_states=readout)
        noisy = result.logits.float().log_softmax(-1)
        kl = (clean.exp() * (clean - noisy)).sum(-1)[batch.scored].mean()
        ids = batch.ids[batch.mask]
        terms = obfuscation_terms(
            x[batch.mask],
            xt[batch.mask],
            ids,
            self.table,
            self.typical_norm,
            cfg.nn_margin if cfg.nn_weight > 0 else -1.0,
        )
        total = cfg.utility_weight * kl + cfg.cos_weight * terms["cos"] + cfg.norm_weight * terms["norm"]
        if "nn" in terms:
            total = total + cfg.nn_weight * terms["nn"]
        log_sigma = torch.log(sigma[batch.mask] / self.table_std).mean(-1)  # per row, in units of the table std
        terms["log_sigma"] = log_sigma.mean()
        if cfg.sigma_weight > 0:
            total = total - cfg.sigma_weight * log_sigma.clamp(max=math.log(cfg.sigma_cap)).mean()
        inputs = {"rows": xt}
        if readout:
            inputs["readout"] = result.hidden_states[cfg.readout_layer]
        weights = {"rows": cfg.adv_weight, "readout": cfg.readout_weight}
        features = {}
        for name, inverter in self.inverters.items():
            features[name] = inverter.features(inputs[name], batch.mask)
            inverter.requires_grad_(False)  # the transform's step must not train its adversary
            logits = inverter.logits(features[name], self.unit_table)
            inverter.requires_grad_(True)
            terms[f"{name}_evasion"] = evasion(logits, ids)
            terms[f"{name}_acc"] = (logits.argmax(-1) == ids).float().mean()
            total = total + weights[name] * terms[f"{name}_evasion"]
        self._pending = ({n: f.detach() for n, f in features.items()}, ids)  # for adversary_step()
        if self.echo:
            terms["echo"] = self._echo_term()
            total = total + cfg.echo_weight * terms["echo"]
        parts = {
            "loss": float(total.detach()),
            "kl": float(kl.detach()),
            **{k: float(v.detach()) for k, v in terms.items()},
        }
        return total, parts

    def _echo_term(self) -> torch.Tensor:
        """``-log(1 - p)`` of the private-fact tokens of an echo, the canary obfuscated, the instruction clean."""
        picks = torch.randint(len(self.echo), (self.config.echo_batch,), generator=self.data_rng)
        chosen = [self.echo[int(i)] for i in picks]
        batch = lab.collate([e for e, _ in chosen]).to(self.device)
        targets = torch.zeros_like(batch.mask)
        for row, (_, scored) in enumerate(chosen):
            targets[row, : len(scored)] = scored.to(self.device)
        xt = self.transform(self.table[batch.ids], batch.mask)
        logits = self.model(inputs_embeds=xt, attention_mask=batch.attention).logits.float()
        nxt = torch.roll(batch.ids, -1, dims=1)[targets]
        return evasion(logits[targets], nxt)

    def adversary_step(self) -> None:
        """The inverters' own steps on the last batch's (detached) rows, after the transform's step."""
        if self.inv_optimizer is None or self._pending is None:
            return
        features, ids = self._pending
        self._pending = None
        for _ in range(self.config.adv_steps):
            inv_loss = sum(
                F.cross_entropy(self.inverters[n].logits(f, self.unit_table), ids) for n, f in features.items()
            )
            self.inv_optimizer.zero_grad(set_to_none=True)
            inv_loss.backward()
            self.inv_optimizer.step()

    def train(self, checkpoint: str | os.PathLike | None = None, progress: bool = True) -> list[dict[str, float]]:
        """Run up to ``config.steps``; checkpoint every ``checkpoint_every`` steps and at the end."""
        cfg = self.config
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress, desc="train sgt", dynamic_ncols=True)
        self.transform.train()
        while self.step < cfg.steps and not (cfg.time_limit and self.seconds >= cfg.time_limit):
            started = time.perf_counter()
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * _lr_factor(self.step, cfg.steps)
            loss, parts = self.loss(self._batch())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.transform.parameters(), 1.0)
            self.optimizer.step()
            self.adversary_step()
            self.step += 1
            self.seconds += time.perf_counter() - started
            self.history.append(parts)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
            if checkpoint and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint(checkpoint)
        bar.close()
        if checkpoint:
            self.save_checkpoint(checkpoint)
        self.transform.eval()
        return self.history

    # ---- checkpoints ----
    def save_checkpoint(self, path: str | os.PathLike) -> None:
        state = {
            "step": self.step,
            "seconds": self.seconds,
            "config": asdict(self.config),
            "transform": {k: v.detach().cpu() for k, v in self.transform.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "inverters": {k: v.detach().cpu() for k, v in self.inverters.state_dict().items()},
            "inv_optimizer": self.inv_optimizer.state_dict() if self.inv_optimizer is not None else None,
            "history": self.history,
            "rng_cpu": torch.get_rng_state(),
            "rng_data": self.data_rng.get_state(),
            "rng_cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
        }
        tmp = Path(str(path) + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.transform.load_state_dict(state["transform"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("inverters"):
            self.inverters.load_state_dict(state["inverters"])
        if state.get("inv_optimizer") and self.inv_optimizer is not None:
            self.inv_optimizer.load_state_dict(state["inv_optimizer"])
        self.step, self.seconds, self.history = int(state["step"]), float(state["seconds"]), list(state["history"])
        torch.set_rng_state(state["rng_cpu"])
        self.data_rng.set_state(state["rng_data"])
        if state.get("rng_cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"])

    # ---- outputs ----
    def metadata(self) -> dict[str, Any]:
        last = self.history[-50:]
        mean = {k: sum(h[k] for h in last) / len(last) for k in last[0]} if last else {}
        cfg = {k: v for k, v in asdict(self.config).items() if k != "extra" and v is not None}
        return {
            "trained": True,
            "steps": self.step,
            "seconds": round(self.seconds, 1),
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "config": cfg,
            "final": mean,
        }

    def write(self, out: str | os.PathLike | None, weights: str | os.PathLike | None = None) -> None:
        """The SGT file (self-contained) and/or the small estimator-weights file."""
        transform = self.transform.to("cpu")
        name = Path(self.model_path).stem if self.model_path.endswith(".gguf") else Path(self.model_path).name
        if out:
            save_sgt_file(out, sgt_content(self.model, self.tokenizer, transform, name, training=self.metadata()))
        if weights:
            save_weights(weights, transform, self.table.cpu(), name, self.metadata())
        transform.to(self.device)


def train_sgt(
    model_path: str | os.PathLike,
    out: str | os.PathLike | None,
    config: TrainConfig,
    device: str = "cpu",
    checkpoint: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    progress: bool = True,
) -> Trainer:
    """Train, checkpoint, write the SGT file (and the weights file if asked)."""
    trainer = Trainer(model_path, config, device=device)
    if resume:
        trainer.load_checkpoint(resume)
    trainer.train(checkpoint=checkpoint or (str(out) + ".ckpt" if out else None), progress=progress)
    trainer.write(out, weights)
    return trainer
