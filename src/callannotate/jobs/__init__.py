"""Jobs: the job model, the durable file queue and the executors that run jobs."""
