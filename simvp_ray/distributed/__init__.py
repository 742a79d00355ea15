"""The Ray edge: Ray Train worker adapter, TorchTrainer launch and Tune experiments."""
