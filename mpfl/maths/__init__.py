"""Consensus rules, vote counting, aggregation, schedules, partitions: numpy only."""
