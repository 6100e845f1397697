"""Chinchilla scaling: the parametric law and its budgets, fits of your runs, sweep planning, run reports.

laws    L(N, D) = E + A/N^alpha + B/D^beta, named constant sets, compute-optimal allocations, Kaplan.
fit     Approach 3 (Huber + L-BFGS from a grid) and Approach 2 (IsoFLOP parabolas); reading runs.
sweep   IsoFLOP sweep configs around N_opt for each budget, with a manifest.
plots   IsoFLOP / frontier figure of a fit; N-D plane of a sweep.
report  What the train loop prints at start and end (budget, optimal allocation, MFU).

Only `laws` is imported here: the others count parameters through meshtron.model, which loads
Flax (about 1.5 s), and `meshtron scaling optimal` should answer without it.
"""

from meshtron.train.scaling.laws import (LAWS, Allocation, Law, cluster_compute, get_law, kaplan_loss_params,
                                         kaplan_loss_tokens, kaplan_optimal_params, optimal_by_compute,
                                         optimal_by_params, optimal_by_tokens, predicted_loss)

__all__ = ["LAWS", "Allocation", "Law", "cluster_compute", "get_law", "kaplan_loss_params", "kaplan_loss_tokens",
           "kaplan_optimal_params", "optimal_by_compute", "optimal_by_params", "optimal_by_tokens", "predicted_loss"]
