"""``python -m sgt_tools eval``'s attack suite: clean, the SGT and Gaussian baselines side by side.

Runs :class:`sgt_tools.attacks.AttackSuite` on each transform (the clean input
is always run: it is every attack's ceiling), writes the JSON and renders the
markdown report table.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sgt_tools.attacks import ATTACKS, ECHO_VARIANTS, AttackSuite, Identity
from sgt_tools.canaries import make_canaries


def parse_attacks(spec: str) -> list[str]:
    """``all``, ``none`` or a comma list of attack names."""
    if spec.strip() == "all":
        return list(ATTACKS)
    if spec.strip() in ("", "none"):
        return []
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; known: all, none, {', '.join(ATTACKS)}")
    return names


def run_suite(
    model_path: str | os.PathLike,
    sgt: str | os.PathLike | None,
    *,
    device: str = "cpu",
    attacks: Sequence[str] = ATTACKS,
    canaries: int = 150,
    canary_seed: int = 0,
    quick: bool = False,
    gaussian: Sequence[float] = (),
    sgt_other: str | os.PathLike | None = None,
    progress: bool = True,
    json_out: str | os.PathLike | None = None,
    noise_scales: Sequence[float] = (),
    include_clean: bool = True,
) -> dict[str, Any]:
    """Every attack on clean input, the SGT (if given) and Gaussian noise at each scale (x the table's std).

    With ``json_out`` the report is rewritten after each transform, so a long run leaves what it has.
    ``noise_scales``: the SGT again with sigma multiplied by each (the serving knob ``SGP_NOISE_SCALE``).
    """
    from sgt_tools.evaluate import gaussian as gaussian_transform
    from sgt_tools.evaluate import load_transform
    from sgt_tools.models import load_model

    model, tokenizer = load_model(model_path)
    pool = make_canaries(2 * canaries, seed=canary_seed)
    suite = AttackSuite(model, tokenizer, pool, device=device, quick=quick)
    other = load_transform(sgt_other, device) if sgt_other else None
    transforms: list[tuple[str, Any, Any]] = [("clean", Identity(), None)] if include_clean else []
    if sgt:
        transforms.append(("sgt", load_transform(sgt, device), other))
        for scale in noise_scales:
            knob = load_transform(sgt, device)
            knob.noise_multiplier = scale
            transforms.append((f"sgt noise x{scale:g}", knob, None))
    for scale in gaussian:
        transforms.append((f"gaussian x{scale:g}", gaussian_transform(suite.table, scale, device), None))
    report: dict[str, Any] = {
        "model": str(model_path),
        "sgt": str(sgt) if sgt else None,
        "sgt_other": str(sgt_other) if sgt_other else None,
        "device": device,
        "quick": quick,
        "canaries": {"seed": canary_seed, "generated": len(pool), "heldout": len(suite.heldout)},
        "config": dict(vars(suite.config)),
        "results": {},
    }
    for name, transform, other_transform in transforms:
        report["results"][name] = suite.run(
            transform, attacks=attacks, other=other_transform, name=name, progress=progress
        )
        if json_out:
            write_json(report, json_out)
    return report


def _pct(value: Any) -> str:
    if value is None or isinstance(value, str) or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.1f}"


def _get(result: dict, *path: str) -> Any:
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def markdown(report: dict[str, Any]) -> str:
    """The report: one summary row per transform, then echo leakage per instruction variant."""
    results: dict[str, dict] = report["results"]
    layers = sorted({k for r in results.values() for k in (_get(r, "readout", "layers") or {})}, key=int)
    head = (
        ["transform", "QA % of clean", "fact task % of clean", "echo facts %", "echo prompts %", "answer facts %"]
        + [f"readout L{layer} %" for layer in layers]
        + ["bank coverage %", "inversion %", "inversion unseen %", "cross-seed %", "link AUC", "NN L2 %", "NN cos %"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        inv = _get(r, "inversion") or {}
        unseen = [inv.get(k) for k in ("linear_unseen", "mlp_unseen", "linear_context_unseen", "mlp_context_unseen")]
        unseen = [u for u in unseen if u is not None]
        cross = inv.get("cross_seed")
        auc = _get(r, "linkability", "auc")
        row = [
            name,
            _pct(_get(r, "utility", "qa_ratio")),
            _pct(_get(r, "utility", "facts_ratio")),
            _pct(_get(r, "echo", "combined", "facts")),
            _pct(_get(r, "echo", "combined", "prompts")),
            _pct(_get(r, "echo", "genuine", "facts")),
            *[_pct(_get(r, "readout", "layers", layer)) for layer in layers],
            _pct(_get(r, "readout", "coverage")),
            _pct(inv.get("best")),
            _pct(max(unseen)) if unseen else "-",
            _pct(cross.get("best")) if isinstance(cross, dict) else ("not run" if inv else "-"),
            f"{auc:.3f}" if isinstance(auc, float) and not math.isnan(auc) else "-",
            _pct(_get(r, "nn", "l2")),
            _pct(_get(r, "nn", "cos")),
        ]
        lines.append("| " + " | ".join(row) + " |")
    if any("echo" in r for r in results.values()):
        names = list(results)
        lines += ["", "Echo: facts leaked % (prompts with a leak %), per instruction variant", ""]
        lines.append("| variant | kind | " + " | ".join(names) + " |")
        lines.append("|" + "---|" * (len(names) + 2))
        for v in ECHO_VARIANTS:
            cells = []
            for n in names:
                hit = _get(results[n], "echo", "variants", v.name)
                cells.append(f"{_pct(hit['facts'])} ({_pct(hit['prompts'])})" if hit else "-")
            lines.append(f"| {v.name} | {v.kind} | " + " | ".join(cells) + " |")
        for label, path in (("any variant", ("combined",)), ("genuine answer", ("genuine",))):
            cells = []
            for n in names:
                hit = _get(results[n], "echo", *path)
                cells.append(f"{_pct(hit['facts'])} ({_pct(hit['prompts'])})" if hit else "-")
            lines.append(f"| **{label}** | | " + " | ".join(cells) + " |")
    held = report.get("canaries", {}).get("heldout")
    utility = [_get(r, "utility") for r in results.values() if _get(r, "utility")]
    sizes = "quick sizes" if report.get("quick") else "full sizes"
    notes = [f"Held-out canaries: {held}; {sizes}; device {report.get('device')}."]
    if utility:
        u = utility[0]
        notes.append(
            f"Clean: QA {_pct(u['qa_clean'])}% of {u['qa_questions']} questions, fact task "
            f"{_pct(u['facts_clean'])}% of {u['fact_questions']}. World-knowledge QA alone overstates utility: "
            "the fact task needs the private facts themselves."
        )
    return "\n".join([*lines, "", *notes])


PANELS = (
    (("echo", "combined", "facts"), "echo: facts leaked, any variant (%)"),
    (("readout", "layers", "1"), "layer-1 readout: tokens recovered (%)"),
    (("inversion", "best"), "SGT-holder inversion: tokens recovered (%)"),
    (("linkability", "auc"), "linkability AUC (x100)"),
)


def draw_privacy_utility(results: dict[str, dict], png: str | os.PathLike, title: str = "") -> Path:
    """QA (% of clean) against each attack's success, one point per transform; Gaussian points joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 4))
    for ax, (path, label) in zip(axes, PANELS, strict=True):
        noise = []
        for name, r in results.items():
            x, y = _get(r, *path), _get(r, "utility", "qa_ratio")
            if not isinstance(x, float) or y is None:
                continue
            ax.scatter(100 * x, 100 * y, color="tab:blue" if name.startswith("gaussian") else "tab:red", zorder=3)
            ax.annotate(name, (100 * x, 100 * y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            if name.startswith("gaussian"):
                noise.append((100 * x, 100 * y))
        if noise:
            ax.plot(*zip(*sorted(noise), strict=True), color="tab:blue", lw=0.8, alpha=0.6)
        ax.axhline(90, color="grey", ls="--", lw=0.8)
        ax.set_xlim(-2, 102)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("QA accuracy, % of clean")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "privacy against the provider's attacks, and utility")
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def write_json(report: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return path
