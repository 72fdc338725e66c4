"""The task room: what a task is (labels, metric), reading and batching its data, evaluation, fine-tuning."""
