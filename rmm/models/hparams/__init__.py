"""Every model's hyperparameters, one torch-free module per model (``hparams/<name>.py`` for
``rmm/models/<name>.py``), so that loading a config validates a model's keys without importing the model."""
