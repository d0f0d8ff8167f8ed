"""Items of rnope's shipped lm-evaluation-harness passkey tasks (the YAMLs next to this file).

lm_eval imports this file through ``custom_dataset: !function passkey_data.passkey_dataset``; the
items are generated in memory from rnope's passkey generator, so the tasks need no data file and
nothing is downloaded. Options come from the task metadata (``--metadata '{"n": 5, "lengths": [2048]}'``).
"""

from rnope.evals.lm_eval_adapter import passkey_dataset

__all__ = ["passkey_dataset"]
