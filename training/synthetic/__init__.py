"""Seeded synthetic chest CT phantoms (anatomy, COVID-like and look-alike lesions) for training."""

from training.synthetic.phantom import CASE_KINDS, PhantomCase, generate_case

__all__ = ["CASE_KINDS", "PhantomCase", "generate_case"]
