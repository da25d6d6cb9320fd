"""Synthetic talking-head data: visemes, mouth articulation, rendering and corpus generation."""
