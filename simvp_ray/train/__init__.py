"""The training loop, optimiser / scheduler, metrics and checkpoint files: torch only, no Ray."""
