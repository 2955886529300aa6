"""The experiments built on the library: many runs trained and evaluated alike,
tabulated and plotted.

- :mod:`vlae.experiments.sweep` -- the collapse sweep: KL against the decoder's receptive field
- :mod:`vlae.experiments.ablation` -- which part of VLAE buys what, at equal budget
- :mod:`vlae.experiments.plots` -- the figures of a run

and what the sweep and the ablation share:

- :mod:`vlae.experiments.tasks` -- a task (one run), the base configuration, option checks
- :mod:`vlae.experiments.runner` -- every unfinished task, ``jobs`` at a time
- :mod:`vlae.experiments.workers` -- the worker processes and how a signal stops them
- :mod:`vlae.experiments.task_run` -- one task in a worker: train, evaluate, record
- :mod:`vlae.experiments.results` -- the run folders' ``results.json``, checked and read back
- :mod:`vlae.experiments.report` -- the tables
- :mod:`vlae.experiments.receptive_field` -- the receptive-field columns

Nothing is imported here: ``import vlae.experiments.sweep`` loads neither
matplotlib nor the trainer until they are needed.
"""

__all__: list[str] = []
