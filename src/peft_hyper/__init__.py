"""peft-hyper."""
