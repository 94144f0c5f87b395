"""``python -m sgt_tools eval``: how private and how useful an SGT is, for a model.

Privacy, on the obfuscated (message-content) tokens of held-out prompts (the
question-answer set, never used in training):

- nearest-neighbour reconstruction over the whole embedding table, by L2 and by
  cosine (the obfuscation score is the share *not* reconstructed by L2, the
  ``/v1/stainedglass`` definition);
- a learned inversion attack: the attacker holds the SGT file and the model,
  makes (transformed row, token) pairs from the training corpus and from random
  token strings covering the vocabulary, trains a linear probe and a small MLP,
  each on the row alone and on the row with its two neighbours, and decodes the
  held-out prompts. Top-1 recovery is reported for each.

Utility: top-1 next-token agreement and mean KL between clean and transformed
inputs (positions from the first obfuscated token on), and greedy question-answer
accuracy with the chat template, clean against transformed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from proxy.sgt.nearest import nearest_tokens
from proxy.sgt.prompt import PromptRenderer
from proxy.sgt.transform import EstimatorConfig, StainedGlassTransform
from sgt_tools import lab


@torch.no_grad()
def nearest_neighbours(rows: torch.Tensor, table: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest table row of each row, by L2 (the proxy's own :func:`nearest_tokens`) and by cosine (ids, each [N])."""
    unit = F.normalize(table.float(), dim=-1)
    by_cos = [(F.normalize(r.float(), dim=-1) @ unit.T).argmax(-1) for r in rows.split(chunk)]
    empty = torch.zeros(0, dtype=torch.long, device=rows.device)
    return nearest_tokens(rows, table, chunk=chunk), (torch.cat(by_cos) if by_cos else empty)


class _Scaled(nn.Module):
    """A transform whose perturbation is multiplied by ``alpha`` (for the sweep)."""

    def __init__(self, inner: StainedGlassTransform, alpha: float) -> None:
        super().__init__()
        self.inner, self.alpha = inner, alpha

    def forward(self, x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        out = self.inner(x, mask, generator=generator)
        return x + self.alpha * (out - x)


class Evaluator:
    """A frozen model, its table and renderer, and the evaluation data."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        device: str = "cpu",
        qa_path: str | None = None,
        corpus_path: str | None = None,
        max_new_tokens: int = 24,
        seed: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.table = model.get_input_embeddings().weight.detach().float()
        self.renderer: PromptRenderer = lab.renderer_for(tokenizer)
        self.qa = lab.qa_items(qa_path)
        self.corpus = lab.corpus_lines(corpus_path)
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.eos = lab.eos_ids(tokenizer)
        self.prompts = [self.renderer.render_chat([{"role": "user", "content": q["question"]}]) for q in self.qa]
        self._clean_answers: list[str] | None = None

    # ---- transformed prompts ----
    @torch.no_grad()
    def _transform_all(self, transform: nn.Module, examples: Sequence[Any]) -> list[torch.Tensor]:
        out = []
        for e in examples:
            rows = lab.rendered_rows(self.table, e)
            out.append(transform(rows, e.mask.to(self.device)))
        return out

    # ---- privacy ----
    def reconstruction(self, transformed: Sequence[torch.Tensor]) -> dict[str, float]:
        rows = torch.cat([t[p.mask.to(self.device)] for t, p in zip(transformed, self.prompts, strict=True)])
        ids = torch.cat([p.ids[p.mask] for p in self.prompts]).to(self.device)
        l2, cos = nearest_neighbours(rows, self.table)
        clean_l2, _ = nearest_neighbours(self.table[ids], self.table)
        return {
            "obfuscated_tokens": len(ids),
            "nn_l2": float((l2 == ids).float().mean()),
            "nn_cos": float((cos == ids).float().mean()),
            "nn_l2_clean": float((clean_l2 == ids).float().mean()),
            "obfuscation_score": float((l2 != ids).float().mean()),
        }

    # ---- utility ----
    @torch.no_grad()
    def agreement(self, transformed: Sequence[torch.Tensor]) -> dict[str, float]:
        agree, kls, count = 0.0, 0.0, 0
        for t, p in zip(transformed, self.prompts, strict=True):
            start = int(p.mask.nonzero()[0, 0]) if p.mask.any() else 0
            clean = self.model(inputs_embeds=self.table[p.ids.to(self.device)][None]).logits[0, start:].float()
            noisy = self.model(inputs_embeds=t[None].to(self.table.dtype)).logits[0, start:].float()
            lc, ln = clean.log_softmax(-1), noisy.log_softmax(-1)
            agree += float((clean.argmax(-1) == noisy.argmax(-1)).sum())
            kls += float((lc.exp() * (lc - ln)).sum(-1).sum())
            count += len(clean)
        return {"top1_agreement": agree / max(1, count), "kl": kls / max(1, count)}

    def answers(self, embeds: Sequence[torch.Tensor]) -> list[str]:
        tokens = lab.greedy(self.model, embeds, self.max_new_tokens, self.eos)
        return [self.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]

    def qa_accuracy(self, transformed: Sequence[torch.Tensor]) -> dict[str, Any]:
        if self._clean_answers is None:
            self._clean_answers = self.answers([lab.rendered_rows(self.table, p) for p in self.prompts])
        noisy = self.answers(transformed)
        clean_ok = [lab.is_correct(a, q["answers"]) for a, q in zip(self._clean_answers, self.qa, strict=True)]
        noisy_ok = [lab.is_correct(a, q["answers"]) for a, q in zip(noisy, self.qa, strict=True)]
        clean_acc = sum(clean_ok) / len(self.qa)
        noisy_acc = sum(noisy_ok) / len(self.qa)
        return {
            "qa_questions": len(self.qa),
            "qa_clean": clean_acc,
            "qa_transformed": noisy_acc,
            "qa_ratio": noisy_acc / clean_acc if clean_acc else 0.0,
            "qa_examples": [
                {"question": q["question"], "clean": c, "transformed": n}
                for q, c, n in list(zip(self.qa, self._clean_answers, noisy, strict=True))[:8]
            ],
        }

    # ---- the learned inversion attack ----
    def attack(
        self, transform: nn.Module, steps: int = 2000, random_prompts: int = 4000, draws: int = 4, hidden: int = 1024
    ) -> dict[str, Any]:
        """Train token classifiers on (transformed row, token) pairs; top-1 recovery on held-out prompts."""
        gen = torch.Generator().manual_seed(self.seed + 1)
        train_examples = lab.chat_examples(self.renderer, self.corpus)
        train_examples += lab.random_examples(self.renderer, int(self.table.shape[0]), random_prompts, gen)
        x_train, y_train = [], []
        for _ in range(draws):
            f, y = self._features(transform, train_examples)
            x_train.append(f)
            y_train.append(y)
        xs, ys = torch.cat(x_train), torch.cat(y_train)
        x_test, y_test = self._features(transform, self.prompts)
        mean, std = xs.mean(0), xs.std(0).clamp_min(1e-6)
        xs, x_test = (xs - mean) / std, (x_test - mean) / std
        dim = self.table.shape[1]
        vocab = int(self.table.shape[0])
        started = time.perf_counter()
        result: dict[str, Any] = {"train_pairs": len(ys), "test_tokens": len(y_test), "steps": steps}
        for context, cols in (("", slice(dim, 2 * dim)), ("_context", slice(0, 3 * dim))):
            for kind in ("linear", "mlp"):
                width = cols.stop - cols.start
                if kind == "linear":
                    net: nn.Module = nn.Linear(width, vocab)
                else:
                    net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, vocab))
                net = net.to(self.device)
                _fit(net, xs[:, cols], ys, steps, gen)
                with torch.no_grad():
                    pred = torch.cat([net(c).argmax(-1) for c in x_test[:, cols].split(4096)])
                result[kind + context] = float((pred == y_test).float().mean())
        result["seconds"] = round(time.perf_counter() - started, 1)
        return result

    @torch.no_grad()
    def _features(self, transform: nn.Module, examples: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """[prev, row, next] transformed rows of each obfuscated token, and its id."""
        feats, ids = [], []
        for e, t in zip(examples, self._transform_all(transform, examples), strict=True):
            padded = F.pad(t.float(), (0, 0, 1, 1))
            ctx = torch.cat([padded[:-2], padded[1:-1], padded[2:]], dim=-1)
            m = e.mask.to(self.device)
            feats.append(ctx[m])
            ids.append(e.ids.to(self.device)[m])
        return torch.cat(feats), torch.cat(ids)

    # ---- everything ----
    def evaluate(self, transform: nn.Module, attack: bool = True, attack_steps: int = 2000, **attack_kw: Any) -> dict:
        torch.manual_seed(self.seed)
        started = time.perf_counter()
        transformed = self._transform_all(transform, self.prompts)
        out: dict[str, Any] = {**self.reconstruction(transformed), **self.agreement(transformed)}
        out.update(self.qa_accuracy(transformed))
        if attack:
            out["attack"] = self.attack(transform, steps=attack_steps, **attack_kw)
        out["seconds"] = round(time.perf_counter() - started, 1)
        return out


def _fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, gen: torch.Generator, batch: int = 1024) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    for _ in range(steps):
        idx = torch.randint(len(y), (min(batch, len(y)),), generator=gen).to(x.device)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def load_transform(sgt_path: str | os.PathLike, device: str = "cpu") -> StainedGlassTransform:
    """The transform of an SGT file (or of an estimator-weights file)."""
    from sgt_tools.weights import WEIGHTS_FORMAT, load_weights

    data = torch.load(sgt_path, map_location="cpu", weights_only=True, mmap=True)
    if data.get("format") == WEIGHTS_FORMAT:
        data = load_weights(sgt_path)
    transform = StainedGlassTransform(EstimatorConfig(**data["estimator"]))
    transform.load_state_dict(data["state_dict"])
    return transform.to(device).eval().requires_grad_(False)


def gaussian(table: torch.Tensor, scale: float, device: str | torch.device) -> StainedGlassTransform:
    """The untrained transform: mu = 0, sigma = scale x the table's per-dimension std."""
    config = EstimatorConfig(hidden_size=int(table.shape[1]), width=8, noise_scale=scale)
    return StainedGlassTransform(config, table_std=table.std(dim=0).cpu()).to(device).eval()


def sweep(
    evaluator: Evaluator,
    transform: nn.Module,
    scales: Sequence[float] = (0.3, 1.0, 2.0, 3.0, 5.0),
    alphas: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
) -> dict[str, list[dict[str, float]]]:
    """Privacy/utility points: Gaussian noise by scale, and the trained transform by perturbation size."""
    keys = ("nn_l2", "nn_cos", "top1_agreement", "kl", "qa_transformed", "qa_ratio")
    curves: dict[str, list[dict[str, float]]] = {"gaussian": [], "trained": []}
    for scale in scales:
        r = evaluator.evaluate(gaussian(evaluator.table, scale, evaluator.device), attack=False)
        curves["gaussian"].append({"scale": scale, **{k: r[k] for k in keys}})
    for alpha in alphas:
        r = evaluator.evaluate(_Scaled(transform, alpha), attack=False)
        curves["trained"].append({"alpha": alpha, **{k: r[k] for k in keys}})
    return curves


def draw_curve(curves: dict[str, list[dict[str, float]]], png: str | os.PathLike, title: str = "") -> Path:
    """QA accuracy (relative to clean) against nearest-neighbour reconstruction, one line per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, points in curves.items():
        if not points:
            continue
        label_key = "scale" if "scale" in points[0] else "alpha"
        for ax, metric in zip(axes, ("nn_l2", "nn_cos"), strict=True):
            xs = [100 * p[metric] for p in points]
            ys = [100 * p["qa_ratio"] for p in points]
            ax.plot(xs, ys, marker="o", label=name)
            for p, xv, yv in zip(points, xs, ys, strict=True):
                ax.annotate(
                    f"{label_key}={p[label_key]:g}", (xv, yv), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
    for ax, metric in zip(axes, ("L2", "cosine"), strict=True):
        ax.axvline(5, color="grey", ls="--", lw=0.8)
        ax.axhline(90, color="grey", ls="--", lw=0.8)
        ax.set_xlabel(f"nearest-neighbour reconstruction by {metric} (% of obfuscated tokens)")
        ax.set_ylabel("QA accuracy, % of clean")
        ax.set_xlim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "Stained Glass Transform: privacy against utility")
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def run_eval(
    model_path: str | os.PathLike,
    sgt_path: str | os.PathLike,
    device: str = "cpu",
    json_out: str | os.PathLike | None = None,
    do_sweep: bool = False,
    png: str | os.PathLike | None = None,
    attack: bool = True,
    attack_steps: int = 2000,
    max_new_tokens: int = 24,
) -> dict[str, Any]:
    """The CLI's eval: metrics (and the sweep) as a dict, written to ``json_out`` if given."""
    from sgt_tools.models import load_model

    model, tokenizer = load_model(model_path)
    evaluator = Evaluator(model, tokenizer, device=device, max_new_tokens=max_new_tokens)
    transform = load_transform(sgt_path, device)
    result = evaluator.evaluate(transform, attack=attack, attack_steps=attack_steps)
    result["sgt"] = str(sgt_path)
    if do_sweep:
        result["sweep"] = sweep(evaluator, transform)
        png = png or (Path(json_out).with_suffix(".png") if json_out else Path("sgt_sweep.png"))
        try:
            result["sweep_png"] = str(draw_curve(result["sweep"], png))
        except ImportError:  # matplotlib is a dev dependency; the points are in the JSON
            result["sweep_png"] = None
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result
