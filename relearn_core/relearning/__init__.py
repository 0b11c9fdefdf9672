"""Re-learning (paper Section IV): pseudo ground truth, features, the pair filter, joint re-learning, saliency."""
