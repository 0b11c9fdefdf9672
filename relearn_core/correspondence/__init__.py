"""Inter-image correspondence (paper Section III): retrieval, regions, SIFT Flow, bi-level alignment."""
