"""PASTA engine."""
