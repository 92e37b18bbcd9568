"""Scaling laws: fits, effective-parameter multipliers, GMSE capacity, leaderboard, plots, planner."""
