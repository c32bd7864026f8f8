"""Vector maths of retrieval: L2 normalisation, Matryoshka truncation, cosine and ColBERT MaxSim scores.

Pure torch on (N, D) single vectors and padded (N, T, D) multi-vectors with a (N, T) mask; no model here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Unit length along the last dimension (zero vectors stay zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def truncate_dims(x: Tensor, dimensions: int | None, *, normalize: bool = True) -> Tensor:
    """Matryoshka truncation: keep the first ``dimensions`` features of every vector, then renormalise."""
    if dimensions is None:
        return x
    width = x.shape[-1]
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= width:
        raise ValueError(f"dimensions must be an integer in [1, {width}] (the embedding width), got {dimensions!r}")
    x = x[..., :dimensions]
    return l2_normalize(x) if normalize else x


def pad_multi(vectors: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """A list of (T_i, D) multi-vectors -> padded (N, T_max, D) and a bool mask (N, T_max)."""
    if len(vectors) == 0:
        raise ValueError("no multi-vectors given")
    dims = {int(v.shape[-1]) for v in vectors}
    if len(dims) != 1 or any(v.dim() != 2 for v in vectors):
        raise ValueError(
            f"multi-vectors must all be (T_i, D) with one D, got shapes {[tuple(v.shape) for v in vectors]}"
        )
    t_max = max(int(v.shape[0]) for v in vectors)
    out = vectors[0].new_zeros(len(vectors), t_max, dims.pop())
    mask = torch.zeros(len(vectors), t_max, dtype=torch.bool, device=out.device)
    for i, v in enumerate(vectors):
        out[i, : v.shape[0]] = v
        mask[i, : v.shape[0]] = True
    return out, mask


def maxsim(queries: Tensor, query_mask: Tensor, docs: Tensor, doc_mask: Tensor, *, doc_chunk: int = 64) -> Tensor:
    """ColBERT late interaction: sum over query tokens of the best dot product with any document token.

    Args:
        queries: (Nq, Tq, D), query_mask: (Nq, Tq) bool; docs: (Nd, Td, D), doc_mask: (Nd, Td) bool.
        doc_chunk: documents scored at once (bounds the (Nq, chunk, Tq, Td) similarity tensor).

    Returns:
        (Nq, Nd) scores. Padded document tokens never win the max; padded query tokens add nothing.
    """
    if queries.shape[-1] != docs.shape[-1]:
        raise ValueError(f"query vectors are {queries.shape[-1]}-d but document vectors are {docs.shape[-1]}-d")
    docs = docs.to(queries.dtype)
    q_weight = query_mask.to(queries.dtype)
    chunks = []
    for start in range(0, docs.shape[0], doc_chunk):
        d, dm = docs[start:start + doc_chunk], doc_mask[start:start + doc_chunk]
        sim = torch.einsum("qtd,nsd->qnts", queries, d)  # (Nq, n, Tq, Td)
        sim = sim.masked_fill(~dm[None, :, None, :], float("-inf"))
        best = sim.amax(dim=-1)  # (Nq, n, Tq)
        # A document without any real token has -inf everywhere: score it as 0 rather than NaN.
        best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))
        chunks.append((best * q_weight[:, None, :]).sum(-1))
    return torch.cat(chunks, dim=1)


def score(queries: Tensor | Sequence[Tensor], docs: Tensor | Sequence[Tensor]) -> Tensor:
    """(N_q, N_d) scores: dot products of single vectors, or MaxSim of lists of multi-vectors."""
    if isinstance(queries, Tensor) and isinstance(docs, Tensor) and queries.dim() == 2 and docs.dim() == 2:
        if queries.shape[-1] != docs.shape[-1]:
            raise ValueError(f"query vectors are {queries.shape[-1]}-d but document vectors are {docs.shape[-1]}-d")
        return queries.float() @ docs.float().T
    if isinstance(queries, Tensor) or isinstance(docs, Tensor):
        raise ValueError("score() needs both sides single-vector (N, D) tensors or both lists of (T_i, D) "
                         "multi-vectors; got one of each (were they embedded in different modes?)")
    q, qm = pad_multi([v.float() for v in queries])
    d, dm = pad_multi([v.float() for v in docs])
    return maxsim(q, qm, d, dm)
