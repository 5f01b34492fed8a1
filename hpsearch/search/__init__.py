"""The search: a study file and its space (``study_file``, ``space``), Optuna's sampler and
pruner (``samplers``), the objective that trains a trial (``objective``, with its
``checkpoints``), and the workers that run trials: ``run.run_study`` (``hpsearch run``), one
worker's loop (``worker``), local worker processes (``local_workers``) and a trial's protocol
across workers (``coordinator``).

Nothing is imported here, so reading a study file does not pay for torch.
"""
