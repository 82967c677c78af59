"""Test-side traffic: what KWOK's simulated pods would report if they ran (see simulator.py)."""
