"""The training stage: splits, the training loop, evaluation, MLflow tracking, one run end to end
(``model_run``) and DDP under torchrun (``distributed``)."""
