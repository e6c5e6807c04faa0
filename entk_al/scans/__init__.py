"""What runs on the executor's tiles: forward passes and cheap scores, BADGE/Core-Set steps, knn
searches, kernel blocks from stored features, and the look-ahead posterior on shards."""
