"""The search: space, objectives, samplers, Optuna studies, tunelab's tables, fronts, verification, export, plots.

It scores configs only through `tunelab.evaluator`; it never imports a backend or the throughput model.
"""
