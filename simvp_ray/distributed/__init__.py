"""The Ray edge, nothing else: the cluster, the Train worker adapter and TorchTrainer of one run,
Tune experiments, and the model actors of batch evaluation and prediction."""
