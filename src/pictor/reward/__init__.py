"""Reward fine-tuning: the model samples, the project's scorer judges, the U-Net learns from both
its good and its bad samples (pictor.reward.finetune). Sits above training, pipeline and
evaluation: it uses all three."""
