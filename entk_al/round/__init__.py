"""What a strategy sees each round: the round context and the strategy protocol."""
