"""Bi-level inter-image alignment (paper Section III-A, Eqs. (1)-(3)).

Given a target image and one retrieved neighbour, their superpixels and proposals, and the SIFT Flow from the target to
the neighbour, find superpixel matches Q_M (each target superpixel i -> neighbour superpixel j, with distance
d(S_i, S_j)) and proposal matches Q_P (each target proposal k -> neighbour proposal l, with dissimilarity g(P_k, P_l)).

- Eq. (2): d(S_i, S_j) is the mean SIFT Flow matching cost ||f(u) - f(v)|| over the pixels u of S_i whose flow lands
  in S_j (Q_S is the flow's pixel correspondence). Only pairs with at least one such pixel are candidates.
- Eq. (3): g(P_k, P_l) sums d over the superpixel matches that join the two proposals. A raw sum would favour
  proposals with nothing matched, so a superpixel of either proposal without a counterpart in the other costs the
  truncation ``tau`` (the cost of an unmatched superpixel, twice the median candidate d: a missing counterpart costs
  more than a typical match), and the sum is normalised by the proposals' sizes:
      g = (sum_{i in P_k, j(i) in P_l} d_ij + tau * #{i in P_k: j(i) not in P_l}) / |P_k|
          + tau * #{j in P_l hit by no i in P_k} / |P_l|.
  A superpixel belongs to a proposal when its centroid lies in the box.
- Eq. (1) is solved by one-fixed-the-other-solved iterations. With Q_M fixed, g is computed for all proposal pairs
  and each target proposal keeps its top-K neighbour proposals. With Q_P fixed, each candidate superpixel match gets
  an object-level support: the share of the target proposals containing S_i whose kept neighbour proposals contain
  S_j. The superpixel cost is d / tau + (1 - share) + (1 - support), where share is the fraction of S_i's pixels
  that the flow sends into S_j (a pair joined by a single stray pixel is a weak correspondence even when its d is
  low); each superpixel keeps its top-K candidates and is matched to the best. K starts at 10 and shrinks by 1 per
  iteration; at K = 1 both alignments are one-to-one, as Eq. (1)'s constraints ask.
- Object-level selection: each final superpixel match is scored by the object-level cost of its superpixel, Eq. (3)'s
  sum of d over a proposal's superpixels (tau for an unmatched one) divided by the proposal's size, averaged over
  the proposals that contain it; the ``object_keep`` fraction (one half) of lowest cost is kept. Measured on SOD
  pairs, this object-level cost predicts whether a match joins superpixels of the same saliency label better than
  the superpixel's own d (ROC AUC 0.70 against 0.64): a flow error that sends a salient region onto background
  shows up as a badly matched object, where one superpixel's cost can still look fine. It is what makes the
  alignment more reliable than SIFT Flow alone, at the price of matching half of the superpixels. (A veto on the
  support alone, tried first, did not help: the flow is smooth, so wrong matches are as consistent with the
  proposals as right ones.)

Everything is vectorised: dense S x T and V x V arrays (a few hundred a side), sparse products for the memberships.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numba
import numpy as np
from scipy import sparse

from ..errors import RelearnError
from ..records import Alignment, FlowGrid, ImageEntry, Proposals, Superpixels
from ..workspace import Stage, Workspace
from .flow import SiftFlowParams, flow_key, grid_coordinates

ALIGN_STAGE = Stage("align", 4)
INITIAL_K = 10
TAU_MEDIANS = 2.0  # unmatched-superpixel cost: this many times the median candidate distance


@dataclass(frozen=True)
class AlignParams:
    initial_k: int = INITIAL_K  # top-K of the first iteration, shrinking by one per iteration
    object_keep: float = 0.5  # keep this fraction of the superpixel matches: those of lowest object-level cost


@dataclass(frozen=True)
class SuperpixelCorrespondence:
    """Pixel correspondences of the flow gathered per superpixel pair: ``counts`` (S, T) pixels of S_i landing in
    S_j, ``distances`` (S, T) Eq. (2)'s d (inf where no pixel lands)."""

    counts: np.ndarray
    distances: np.ndarray

    def flow_matches(self) -> np.ndarray:
        """SIFT Flow alone: (M, 2) rows (i, j), j the neighbour superpixel where most of S_i's pixels land."""
        matched = np.flatnonzero(self.counts.sum(1) > 0)
        return np.stack([matched, self.counts[matched].argmax(1)], 1)


def superpixel_correspondence(
    target: Superpixels, neighbour: Superpixels, flow: np.ndarray, cost: np.ndarray
) -> SuperpixelCorrespondence:
    """Eq. (2) for all superpixel pairs at once.

    ``flow`` (h, w, 2) holds (dx, dy) in full-image pixels at the centres of an (h, w) grid over the target (the full
    image or a coarser sampling of it), ``cost`` (h, w) the matching cost there. Pixels whose flow leaves the
    neighbour, or whose cost is not finite, count for nothing.
    """
    xs, ys = grid_coordinates(flow.shape[:2], target.labels.shape)
    source = target.labels[ys, xs].ravel().astype(np.int64)
    nh, nw = neighbour.labels.shape
    to_x = np.rint(xs + flow[..., 0]).ravel()
    to_y = np.rint(ys + flow[..., 1]).ravel()
    cost = cost.ravel().astype(np.float64)
    valid = (to_x >= 0) & (to_x < nw) & (to_y >= 0) & (to_y < nh) & np.isfinite(cost) & np.isfinite(to_x + to_y)
    landed = neighbour.labels[to_y[valid].astype(np.int64), to_x[valid].astype(np.int64)].astype(np.int64)
    pair = source[valid] * neighbour.count + landed
    size = target.count * neighbour.count
    counts = np.bincount(pair, minlength=size).reshape(target.count, neighbour.count)
    sums = np.bincount(pair, weights=cost[valid], minlength=size).reshape(target.count, neighbour.count)
    with np.errstate(invalid="ignore", divide="ignore"):
        distances = np.where(counts > 0, sums / counts, np.inf)
    return SuperpixelCorrespondence(counts, distances)


def membership(proposals: Proposals, superpixels: Superpixels) -> np.ndarray:
    """(V, S) bool: superpixel s belongs to proposal v when its centroid lies inside the box."""
    centres = superpixels.centroids()
    boxes = proposals.boxes.astype(np.float64)
    inside_x = (centres[None, :, 0] >= boxes[:, None, 0]) & (centres[None, :, 0] < boxes[:, None, 2])
    inside_y = (centres[None, :, 1] >= boxes[:, None, 1]) & (centres[None, :, 1] < boxes[:, None, 3])
    return inside_x & inside_y


class _Memberships:
    """The proposal memberships of a pair, converted once into the sparse forms that every iteration multiplies by
    (sparse: small and sparse, dense products would spend more time in BLAS threading than in arithmetic)."""

    def __init__(self, target_members: np.ndarray, neighbour_members: np.ndarray):
        self.target = target_members  # (V_t, S) bool
        self.neighbour = sparse.csr_matrix(neighbour_members, dtype=np.float64)  # (V_n, T)
        self.neighbour_t = self.neighbour.T.tocsr()  # (T, V_n)
        self.size_t = target_members.sum(1).astype(np.float64)[:, None]
        self.size_n = neighbour_members.sum(1).astype(np.float64)[None, :]
        self.containing = target_members.sum(0).astype(np.float64)  # (S,) target proposals holding each superpixel
        self.holding = sparse.csr_matrix(target_members.T)  # (S, V_t): the target proposals holding each superpixel
        self.rows = None

    def matched(self, rows: np.ndarray) -> sparse.csr_matrix:
        """(V_t, M) membership of the matched superpixels ``rows``: fixed over the iterations of one alignment, so
        converted once."""
        if self.rows is None or not np.array_equal(self.rows, rows):
            self.rows = rows
            self.from_k = sparse.csr_matrix(self.target[:, rows], dtype=np.float64)
        return self.from_k


def proposal_dissimilarity(
    matches: np.ndarray, distances: np.ndarray, target_members: np.ndarray, neighbour_members: np.ndarray, tau: float
) -> np.ndarray:
    """Eq. (3) for all proposal pairs: g (V_t, V_n) given the superpixel matching ``matches`` (S,) (-1: unmatched)
    with distances (S,). Proposals with no superpixel get inf."""
    return _proposal_dissimilarity(matches, distances, _Memberships(target_members, neighbour_members), tau)


def _proposal_dissimilarity(
    matches: np.ndarray, distances: np.ndarray, members: _Memberships, tau: float
) -> np.ndarray:
    rows = np.flatnonzero(matches >= 0)
    cols = matches[rows]
    # restricted to the matched superpixels: P_k's matched S_i, each with its partner's neighbour proposals
    from_k = members.matched(rows)  # (V_t, M): P_k holds the matched S_i
    shape = (members.target.shape[0], members.neighbour.shape[0])
    joined, joined_cost, hit = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    _join_proposals(
        from_k.indptr,
        from_k.indices,
        cols,
        distances[rows],
        members.neighbour_t.indptr,
        members.neighbour_t.indices,
        np.full(members.neighbour.shape[1], -1, np.int64),
        joined,
        joined_cost,
        hit,
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        forward = (joined_cost + tau * (members.size_t - joined)) / members.size_t
        backward = tau * (members.size_n - hit) / members.size_n
    g = forward + backward
    return np.where((members.size_t > 0) & (members.size_n > 0), g, np.inf)


@numba.njit(cache=True, nogil=True)
def _join_proposals(
    from_starts, from_matches, cols, distances, into_starts, into_proposals, seen, joined, joined_cost, hit
):
    """For each target proposal P_k (rows of the CSR (V_t, M) ``from_*``) and neighbour proposal P_l (CSR (T, V_n)
    ``into_*``): joined, the number of P_k's matched superpixels whose partner is in P_l; joined_cost, the sum of
    their distances, added in the order of the matches (as a sparse product would); hit, the number of P_l's
    superpixels that are the partner of one of P_k's. seen (T,) is scratch, all -1."""
    for k in range(len(from_starts) - 1):
        for at in range(from_starts[k], from_starts[k + 1]):
            match = from_matches[at]
            partner = cols[match]
            fresh = seen[partner] != k
            seen[partner] = k
            for into in range(into_starts[partner], into_starts[partner + 1]):
                l = into_proposals[into]
                joined[k, l] += 1.0
                joined_cost[k, l] += distances[match]
                if fresh:
                    hit[k, l] += 1.0


def _top_k_mask(costs: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the k lowest finite entries of each row."""
    k = min(k, costs.shape[1])
    order = np.argpartition(costs, k - 1, axis=1)[:, :k]
    mask = np.zeros(costs.shape, bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask & np.isfinite(costs)


def object_support(
    kept_proposals: np.ndarray, target_members: np.ndarray, neighbour_members: np.ndarray, pairs: np.ndarray
) -> np.ndarray:
    """(S, T), filled at the candidate ``pairs`` (bool (S, T)) only: share of the target proposals containing S_i
    whose kept neighbour proposals contain S_j; 1 where S_i lies in no proposal (no object-level evidence)."""
    i, j = np.nonzero(pairs)
    support = np.zeros(pairs.shape)
    support[i, j] = _object_support(kept_proposals, _Memberships(target_members, neighbour_members), i, j)
    return support


def _object_support(kept_proposals: np.ndarray, members: _Memberships, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """object_support at the candidate pairs (i, j) only."""
    reach = (sparse.csr_matrix(kept_proposals, dtype=np.float64) @ members.neighbour).toarray() > 0  # (V_t, T)
    agreeing = np.empty(len(i), np.int64)
    _count_agreeing(members.holding.indptr, members.holding.indices, reach, i, j, agreeing)
    containing = members.containing[i]
    return np.where(containing > 0, agreeing / np.maximum(containing, 1), 1.0)


@numba.njit(cache=True, nogil=True)
def _count_agreeing(holding_starts, holding, reach, i, j, agreeing):
    """For each pair (i[n], j[n]): how many of the target proposals holding S_i (CSR ``holding_*``) reach S_j."""
    for n in range(len(i)):
        count = 0
        for at in range(holding_starts[i[n]], holding_starts[i[n] + 1]):
            if reach[holding[at], j[n]]:
                count += 1
        agreeing[n] = count


def object_level_cost(matches: np.ndarray, distances: np.ndarray, target_members: np.ndarray, tau: float) -> np.ndarray:
    """(S,) object-level matching cost of each target superpixel: Eq. (3)'s sum of d over a proposal's superpixels
    (tau for an unmatched one) divided by the proposal's size, averaged over the proposals containing the superpixel;
    a superpixel in no proposal gets its own d."""
    own = np.full(len(matches), tau)
    matched = matches >= 0
    own[matched] = distances[np.flatnonzero(matched), matches[matched]]
    members = sparse.csr_matrix(target_members, dtype=np.float64)
    sizes = np.asarray(members.sum(1)).ravel()
    per_proposal = (members @ own) / np.maximum(sizes, 1)
    containing = np.asarray(members.sum(0)).ravel()
    averaged = (members.T @ per_proposal) / np.maximum(containing, 1)
    return np.where(containing > 0, averaged, own)


def align_correspondence(
    correspondence: SuperpixelCorrespondence,
    target_members: np.ndarray,
    neighbour_members: np.ndarray,
    params: AlignParams = AlignParams(),
) -> Alignment:
    """Eq. (1) by alternating top-K alignments, from the per-superpixel-pair correspondence and memberships (and, for
    comparison, SIFT Flow's own matches)."""
    distances = correspondence.distances
    candidates = np.isfinite(distances)
    rows = np.flatnonzero(candidates.any(1))
    if rows.size == 0:
        empty = np.zeros((0, 2), np.int64)
        return Alignment(empty, np.zeros(0), np.zeros(0), empty, np.zeros(0), correspondence.flow_matches())
    tau = max(TAU_MEDIANS * float(np.median(distances[candidates])), 1e-6)
    # start from SIFT Flow alone: where most of each superpixel's pixels land
    matches = np.full(distances.shape[0], -1, np.int64)
    matches[rows] = correspondence.counts[rows].argmax(1)
    share = correspondence.counts / np.maximum(correspondence.counts.sum(1, keepdims=True), 1)
    # the superpixel cost's terms fixed over the iterations: distance and share
    fixed_cost = distances / tau + (1.0 - share)
    allowed = candidates.copy()
    kept = np.zeros((target_members.shape[0], neighbour_members.shape[0]), bool)
    g = np.full(kept.shape, np.inf)
    # the last iteration's object-level support at its candidate pairs (i, j); 1 without any iteration
    i, j = rows, matches[rows]
    support_at = np.ones(len(rows))
    members = _Memberships(target_members, neighbour_members)
    for k in range(params.initial_k, 0, -1):
        # Q_M fixed: solve Q_P, each target proposal keeps its k most similar neighbour proposals
        matched_distance = np.where(matches >= 0, distances[np.arange(len(matches)), np.maximum(matches, 0)], 0.0)
        g = _proposal_dissimilarity(matches, matched_distance, members, tau)
        kept = _top_k_mask(g, k)
        # Q_P fixed: solve Q_M, each superpixel keeps its k best candidates under distance plus object support
        i, j = np.nonzero(allowed)
        support_at = _object_support(kept, members, i, j)
        superpixel_cost = np.full(distances.shape, np.inf)
        superpixel_cost[i, j] = fixed_cost[i, j] + (1.0 - support_at)
        allowed = _top_k_mask(superpixel_cost, k)
        best = superpixel_cost[rows].argmin(1)
        matches[rows] = best
    support = np.zeros(distances.shape)
    support[i, j] = support_at
    chosen_support = support[rows, matches[rows]]
    object_cost = object_level_cost(matches, distances, target_members, tau)
    keep = object_cost[rows] <= np.quantile(object_cost[rows], params.object_keep)
    i = rows[keep]
    j = matches[rows][keep]
    proposal_rows = np.flatnonzero(np.isfinite(g).any(1))
    proposal_cols = g[proposal_rows].argmin(1)
    return Alignment(
        superpixel_matches=np.stack([i, j], 1).astype(np.int64),
        superpixel_distances=distances[i, j].astype(np.float64),
        support=chosen_support[keep].astype(np.float64),
        proposal_matches=np.stack([proposal_rows, proposal_cols], 1).astype(np.int64),
        proposal_similarities=g[proposal_rows, proposal_cols].astype(np.float64),
        flow_matches=correspondence.flow_matches(),
    )


@dataclass(frozen=True)
class Regions:
    """An image's superpixels and proposals, and which superpixels each proposal holds."""

    superpixels: Superpixels
    proposals: Proposals

    @property
    def members(self) -> np.ndarray:
        return membership(self.proposals, self.superpixels)


def alignments_for(
    ws: Workspace,
    target: ImageEntry,
    target_regions: Regions,
    neighbours: list[ImageEntry],
    neighbour_regions: list[Regions],
    flows: list[FlowGrid],
    align_params: AlignParams,
    flow_params: SiftFlowParams,
    grid: int,
    region_key: dict,
) -> list[Alignment]:
    """The bi-level alignment of the target with each neighbour, cached. ``region_key`` holds the parameters that
    fixed the regions (superpixel and proposal counts, edge map): they fix the alignment too."""
    target_members = target_regions.members

    def compute(indices: list[int]) -> list[Alignment]:
        found = []
        for i in indices:
            correspondence = superpixel_correspondence(
                target_regions.superpixels, neighbour_regions[i].superpixels, flows[i].flow, flows[i].cost
            )
            found.append(
                align_correspondence(correspondence, target_members, neighbour_regions[i].members, align_params)
            )
        return found

    params = {**asdict(align_params), **region_key, **flow_key(flow_params, grid)}
    return ws.run_batch(ALIGN_STAGE, [[target.hash, n.hash] for n in neighbours], params, compute, Alignment)


def match_similarity(distances: np.ndarray, support: np.ndarray) -> np.ndarray:
    """g in [0, 1] of superpixel matches: exp(-d / median d of the pair) times the object-level support.

    d is Eq. (2)'s SIFT Flow distance (its scale depends on the image pair, hence the median), the support the share
    of the proposals around the target superpixel that the bi-level alignment sent where its match lies.
    """
    if len(distances) == 0:
        return np.zeros(0)
    scale = max(float(np.median(distances)), 1e-6)
    return np.exp(-np.asarray(distances) / scale) * np.asarray(support)


def superpixel_matches(alignment: Alignment, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Superpixel matches (K, 2) and their g, from the bi-level alignment (``"bilevel"``) or SIFT Flow alone
    (``"flow"``, g = 1)."""
    if how == "bilevel":
        return alignment.superpixel_matches, match_similarity(alignment.superpixel_distances, alignment.support)
    if how == "flow":
        return alignment.flow_matches, np.ones(len(alignment.flow_matches))
    raise RelearnError(f"unknown alignment {how!r}: expected 'bilevel' or 'flow'")
