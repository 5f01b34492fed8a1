"""Where studies live, below Optuna's storage API and without torch: storage URLs (``urls``),
opening a storage (``database``), reading a study's counts (``counts``), database errors and
retries (``errors``), the study lock (``lock``), a worker's batched view of the storage
(``worker_view``), every use below Optuna's public API (``optuna_internals``), and the
artifact store of checkpoints and finalized models (``artifacts``).

Nothing is imported here: each command imports the modules it uses.
"""
