"""Training V-Express: data preparation (`prepare`), samples (`dataset`) and the three-stage
trainer with conditional dropout (`train`, stage table in `stages`).

Imported as `vexpress_training` (see `__main__.py`), never as a bare `training`."""
