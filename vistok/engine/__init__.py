"""Training engine: distributed set-up, optimizer and schedules, EMA, checkpoints, logging, the shared loop pieces."""
