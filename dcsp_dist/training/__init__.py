"""Training: the step (trainer), its schedule, losses and recovery, the worlds it runs in
(fixed, elastic, with a watchdog), what it reports, and the cue writer between stages."""
