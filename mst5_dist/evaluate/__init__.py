"""Evaluation tasks, one module per family (STS now; Tatoeba, BUCC, alignment metrics follow)."""
