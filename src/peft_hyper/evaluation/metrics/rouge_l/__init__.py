"""Local `evaluate` metric module; load it with `peft_hyper.evaluation.metrics.load_metric("rouge_l")`."""
