"""Training V-Express: data preparation (`training.prepare`), samples (`training.dataset`) and the
three-stage trainer with conditional dropout (`training.train`, stage table in `training.stages`)."""
