"""``patseg reproduce``: the paper's Tables I and II, trained, evaluated and tabulated over seeds.

- :mod:`~patseg.reproduce.rows`: the rows, one training config each in ``configs/paper/<table>/<row>.yaml``.
- :mod:`~patseg.reproduce.plan`: every train and eval command as an argv list; which runs are complete,
  interrupted (resumed) or new.
- :mod:`~patseg.reproduce.checks`: what a run needs, checked before any work.
- :mod:`~patseg.reproduce.runner`: runs the plan (subprocesses; in this process in ``--tiny`` mode) or prints it
  with each row's cost (``--dry-run``).
- :mod:`~patseg.reproduce.estimate`: FLOPs and activation memory of one measured training step, GPU-hours.
- :mod:`~patseg.reproduce.tiny`: the generated data and random Inception weights of ``--tiny``.
- :mod:`~patseg.reproduce.table`: the table in the paper's layout, markdown and JSON.
"""
