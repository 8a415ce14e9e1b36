"""Test rules for tests/placement_driver (trio tests run in trio_mode):

* No test sleeps to wait for something it can await.
"""
