"""Training machinery shared by the tokenizer and generator trainers: EMA, optimiser groups, LR schedules, atomic
checkpoints with exact resume, a resumable distributed sampler, torchrun/DDP set-up and metric logging."""
