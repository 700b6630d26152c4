"""The training layer: ``recipe.train(cfg)`` and the pieces it is made of.

builders.py    accelerator, encoder + LoRA, data + sampler + collator, optimizer, DeepSpeed fields
schedules.py   learning-rate schedules by name (optim.scheduler)
step.py        one optimizer step: encode, the objective's loss, backward, clip, step
checkpoint.py  resumable checkpoints, ``final/`` and the adapter read-back check
evaluation.py  periodic STS evaluation and ``best/``
metrics.py     the train_log.jsonl record: throughput, padding, memory, FLOPs
signals.py     stop signals -> checkpoint at the next step boundary
recipe.py      train(): setup -> resume -> loop -> save -> cleanup
"""
