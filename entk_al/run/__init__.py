"""A run: its configuration and setup, the query step, the loop, checkpoints, oracles, the library
API (query, ActiveLearner), strategy lookup and stop rules."""
