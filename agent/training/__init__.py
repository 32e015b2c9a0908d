"""On-device training: TFLite runtime loading, the trainer, numpy reference models, the model zoo."""
