"""Nearest table row of embedding rows: what an eavesdropper with the embedding table reads.

Shared by ``/v1/stainedglass`` (its reconstructed prompt and obfuscation score) and
the offline attacks (:mod:`sgt_tools.evaluate`, :mod:`sgt_tools.attacks`), so that
the score a user sees and the one the tools publish are the same computation.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def nearest_tokens(
    rows: torch.Tensor, table: torch.Tensor, chunk: int = 1024, table_chunk: int = 16384
) -> torch.Tensor:
    """Id of the nearest table row (L2) for each row, on the rows' device.

    The table is read in its own dtype, ``table_chunk`` rows at a time (in float32),
    so that a bf16 table of a large vocabulary is never copied whole; ties go to the
    lower id.
    """
    out = []
    for start in range(0, len(rows), chunk):
        r = rows[start : start + chunk].float()
        best_d = torch.full((len(r),), float("inf"), device=r.device)
        best_i = torch.zeros(len(r), dtype=torch.long, device=r.device)
        for t_start in range(0, table.shape[0], table_chunk):
            t = table[t_start : t_start + table_chunk].to(r.device).float()
            d = (t * t).sum(-1)[None, :] - 2 * r @ t.T
            val, idx = d.min(-1)
            better = val < best_d
            best_d = torch.where(better, val, best_d)
            best_i = torch.where(better, idx + t_start, best_i)
        out.append(best_i)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=rows.device)
