"""Benchmark of the event backbone: outbox commit to consumer commit, through RabbitMQ."""
